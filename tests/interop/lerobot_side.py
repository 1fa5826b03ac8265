"""LeRobot's half of the interoperability test. Runs under LeRobot's interpreter (never ours).

    python lerobot_side.py CHECKPOINT_DIR IO_DIR

Loads a checkpoint written by smolvla with LeRobot's own API (`SmolVLAPolicy.from_pretrained`,
`make_pre_post_processors(..., pretrained_path=...)`), reports how the loading went, runs each case of
`IO_DIR/inputs.json` + `IO_DIR/inputs.safetensors` through LeRobot's preprocessor, policy and
postprocessor, and writes `IO_DIR/outputs.safetensors` and `IO_DIR/report.json`. It also re-saves what it
loaded under `IO_DIR/resaved/` so that the caller can check nothing was dropped or altered.

Run it with the checkpoint folder as the current directory when `vlm_model_name` is relative: LeRobot
(through transformers) resolves it against the current directory. Only local files are read: the socket
guard below refuses any connection, and HF_HUB_OFFLINE should be set by the caller.
Data goes in and out through JSON and safetensors only.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

_CONNECTIONS: list[str] = []
_real_connect = socket.socket.connect


def _guard(self, address, *args, **kwargs):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _CONNECTIONS.append(str(address))
        raise OSError(f"lerobot_side.py: network access refused ({address}); everything must be local")
    return _real_connect(self, address, *args, **kwargs)


socket.socket.connect = _guard  # before anything that could open a connection is imported


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def run_cases(policy, pre, post, io: Path) -> None:
    """Each case of IO_DIR/inputs.* through LeRobot's preprocessor, `predict_action_chunk` with the case's
    noise, and postprocessor, into IO_DIR/outputs.safetensors (with the preprocessed inputs beside)."""
    import torch
    from safetensors.torch import load_file, save_file

    spec = json.loads((io / "inputs.json").read_text())
    inputs = load_file(str(io / "inputs.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for case in spec["cases"]:
        name = case["name"]
        observation = {k: inputs[f"{name}/{k}"].clone() for k in case["tensor_keys"]}
        observation["task"] = case["task"]
        batch = pre(observation)
        with torch.no_grad():
            normalized = policy.predict_action_chunk(batch, noise=inputs[f"{name}/noise"])
        out[f"{name}/observation.language.tokens"] = batch["observation.language.tokens"]
        out[f"{name}/observation.language.attention_mask"] = batch["observation.language.attention_mask"]
        out[f"{name}/observation.state"] = batch["observation.state"]
        for key in case["tensor_keys"]:
            if key.startswith("observation.images."):
                out[f"{name}/{key}"] = batch[key]
        out[f"{name}/actions_normalized"] = normalized
        out[f"{name}/actions"] = post(normalized)
    save_file({k: v.detach().cpu().contiguous() for k, v in out.items()}, str(io / "outputs.safetensors"))


def main(ckpt: Path, io: Path) -> None:
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    logging.getLogger().setLevel(logging.WARNING)

    import lerobot
    import torch
    import transformers
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from safetensors.torch import load_file

    torch.manual_seed(0)
    report: dict = {
        "versions": {
            "lerobot": lerobot.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }

    # -- the policy: LeRobot's default (non-strict) load, which only logs key mismatches -----------------
    n_before = len(capture.messages)
    policy = SmolVLAPolicy.from_pretrained(str(ckpt))
    report["load_warnings"] = capture.messages[n_before:]
    policy.eval()

    file_tensors = load_file(str(ckpt / "model.safetensors"))
    state = policy.state_dict()
    report["missing_keys"] = sorted(set(state) - set(file_tensors))
    report["unexpected_keys"] = sorted(set(file_tensors) - set(state))
    mismatched = []
    for key in sorted(set(state) & set(file_tensors)):
        mine, theirs = state[key], file_tensors[key]
        if tuple(mine.shape) != tuple(theirs.shape):
            mismatched.append(f"{key}: shape {tuple(theirs.shape)} in the file, {tuple(mine.shape)} loaded")
        elif not torch.equal(mine.cpu(), theirs.to(mine.dtype)):
            mismatched.append(f"{key}: values differ from the file")
    report["mismatched_tensors"] = mismatched
    report["n_tensors"] = {"file": len(file_tensors), "model": len(state)}
    report["parameter_dtypes"] = sorted({str(t.dtype) for t in state.values()})

    # -- the processors --------------------------------------------------------------------------------
    n_before = len(capture.messages)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(ckpt))
    report["processor_warnings"] = capture.messages[n_before:]
    report["pre_steps"] = [type(s).__name__ for s in pre.steps]
    report["post_steps"] = [type(s).__name__ for s in post.steps]

    # -- what LeRobot would write back after loading our files ----------------------------------------
    resaved = io / "resaved"
    resaved.mkdir(exist_ok=True)
    policy.config._save_pretrained(resaved)
    pre.save_pretrained(resaved)
    post.save_pretrained(resaved)

    # -- the cases -------------------------------------------------------------------------------------
    run_cases(policy, pre, post, io)

    report["network_attempts"] = _CONNECTIONS
    report["all_warnings"] = capture.messages
    (io / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} CHECKPOINT_DIR IO_DIR")
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
