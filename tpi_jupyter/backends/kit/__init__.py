"""Cloud-neutral scaffolding every backend reuses: steps with rollback, tags, sweep, the agent wheel."""
