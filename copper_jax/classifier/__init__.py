"""The baseline stress-time classifier: program.py (model, jitted steps, restore), steps.py (pure steps), run.py
(the job: train, evaluate, CAMs), grid_search.py (the paper's search over c, d, n, N)."""
