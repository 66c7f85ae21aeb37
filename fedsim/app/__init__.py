"""What a user runs: the command line, sweeps, reports, progress, tracking and the deployment commands."""
