"""The paper's human comparison: experts label the held-out images blind, and their results sit next to the model's.

`server.serve(work_dir, port)` (launch/blind_test.py) serves one local page (`page`) on 127.0.0.1: first
`practice_per_label` training images of every stress time for practice, then the test images of
`workdir/splits.json` in an order seeded by the expert's name, without labels. Every click is POSTed and saved at
once (atomic write) to `workdir/blind_test/<expert>.json` (`session`), so a closed tab loses nothing and reopening
resumes. `scores.expert_results(work_dir)` then scores every expert (accuracy with per-label Wilson intervals,
confusion, mean absolute error in label steps, Spearman), tests each against the classifier on the same images
(exact McNemar), draws the paper's Figure 7 (an expert) and Figure 8 (the classifier) (`figures`), and writes every
answer to `workdir/blind_test/answers.csv`.
"""
