"""What people look at: pixels.py (gray levels, overlays, PNG), plots.py (figures), report.py (report.html). They
read results and arrays; none of them restores a model."""
