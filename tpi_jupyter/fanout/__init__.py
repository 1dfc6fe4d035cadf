"""Fan-out: many small tasks through a real queue, worked by `process_task` workers (issue 15)."""
