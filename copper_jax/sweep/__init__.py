"""The hypothesis sweep: program.py (steps lifted over members, build, restore), steps.py (one member's pure
steps), run.py (the job: train, evaluate, write), results.py (ranking, intervals, verdict)."""
