"""Self-hosted CI runners (TPI's `iterative_cml_runner`) on a long-lived machine.

The repository token (`REPO_TOKEN`) stays on the client: it asks the forge for a short-lived,
single-use registration (`forge`) and gives only that to the machine, whose runner takes jobs
with the labels, unregisters after an idle timeout and releases the machine (`program`).
"""
