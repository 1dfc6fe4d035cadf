"""The fault suite (issue 18): preemptions, storage faults, client crashes, kernel restarts,
full disks and a secret scan, on every backend that runs here. Long forms run in
benchmarks/soak.py."""
