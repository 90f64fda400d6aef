"""The experts' blind test: a local page to label the held-out images, then each expert's results.

  python launch/blind_test.py --workdir=runs/clf_demo [--port=8000] [--expert=NAME] [--practice_per_label=3]

Open the printed address (this machine only). Answers are saved at every click to WORKDIR/blind_test/<expert>.json;
reopening the page resumes. Ctrl-C stops the server and writes WORKDIR/blind_test/results.json (with the
exact McNemar test of each expert against the classifier on the same images), answers.csv and the figures.
"""
import threading

from absl import flags

from copper_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir with splits.json (classifier or sweep).", required=True)
_PORT = flags.DEFINE_integer("port", 8000, "Port on 127.0.0.1 (0: any free port).", lower_bound=0,
                            upper_bound=65535)
_EXPERT = flags.DEFINE_string("expert", None, "The expert's name (default: the page asks for it).")
_PRACTICE = flags.DEFINE_integer("practice_per_label", 3, "Labelled training images shown per stress time before the "
                                 "test (0: none).")
_QUIET = flags.DEFINE_bool("quiet", False, "Print only errors, the address and the final lines.")


def main(argv):
  del argv
  from copper_jax.blind_test import scores as blind_scores, server as blind_server, session as blind_session
  server = blind_server.serve(_WORKDIR.value, _PORT.value, _EXPERT.value, quiet=_QUIET.value,
                              practice_per_label=_PRACTICE.value)
  query = f"?expert={_EXPERT.value}" if _EXPERT.value else ""
  print(f"blind test: open http://127.0.0.1:{server.server_port}/{query} (Ctrl-C to stop)", flush=True)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    pass
  finally:
    server.shutdown()
    server.server_close()
  results = blind_scores.expert_results(_WORKDIR.value)
  if not results["experts"]:
    print("no answers yet")
    return
  for name, expert in sorted(results["experts"].items()):
    print(blind_scores.headline(name, expert))
  print(f"results: {_WORKDIR.value}/{blind_session.FOLDER}/{blind_session.RESULTS_FILE}")


if __name__ == "__main__":
  cli.run(main)
