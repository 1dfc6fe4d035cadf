"""Long-lived machines (TPI's `iterative_machine`): one machine with SSH access, per cloud.

`registry` keeps one record per machine (next to, not inside, the task registry); `driver` is
the per-cloud contract, found by entry point; `lifecycle` creates (with rollback), reads, stops,
starts and destroys; `verbs` is the `machine` verb shared by `%tpi` and `tpi`.
"""
