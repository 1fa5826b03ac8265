"""Child process of the crash tests: records episodes and dies by SIGKILL where it is told to.

    python crash_writer.py ROOT LENGTHS MODE [VIDEO_MB]

LENGTHS: comma-separated episode lengths. MODE:
  hang:E:F        after frame F of episode E, print "READY" and wait to be killed by the parent
  point:NAME:E    kill itself when the writer reaches commit step NAME while saving episode E
  finalize:NAME   record everything, then kill itself at step NAME of finalize
  loop            record without end (the parent kills it at a random moment)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Neither loads torch: each child process starts in a fraction of a second.
import synth

from smolvla.data import writer as writer_mod


def main() -> None:
    root, lengths, mode = Path(sys.argv[1]), [int(x) for x in sys.argv[2].split(",")], sys.argv[3]
    video_mb = float(sys.argv[4]) if len(sys.argv) > 4 else 200
    feats = synth.features()
    kind, *args = mode.split(":")
    state = {"episode": -1, "finalizing": False}

    def hook(point: str) -> None:
        if kind == "point" and point == args[0] and state["episode"] == int(args[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "finalize" and state["finalizing"] and point == args[0]:
            os.kill(os.getpid(), signal.SIGKILL)

    writer_mod._crash_hook = hook
    w = writer_mod.DatasetWriter.create(root, fps=synth.FPS, features=feats, video_files_size_in_mb=video_mb)
    e = 0
    while True:
        n = lengths[e % len(lengths)]
        for i, fr in enumerate(synth.episode(e, n, feats)):
            w.add_frame(dict(fr))
            if kind == "hang" and (e, i) == (int(args[0]), int(args[1])):
                print("READY", flush=True)
                time.sleep(60)
        state["episode"] = e
        w.save_episode()
        e += 1
        if kind == "loop":
            print(f"SAVED {e}", flush=True)
        elif e == len(lengths):
            break
    state["finalizing"] = True
    w.finalize()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
