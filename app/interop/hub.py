"""Sharing through the Hugging Face Hub: `xr0 model push|pull` and `xr0 dataset push|pull`.

Only these commands reach the Hub, and only for the repo id the user names. What goes up:
- a **checkpoint**: its weights, config, processor files and `deploy.json` (not `resume/`, the optimiser
  state), with a model card (README.md) that states the deployment contract — the cameras in prompt order,
  rate, chunk length, joints and action representation — so a lab can tell from the Hub page whether the
  checkpoint fits its rig. Diagnostic checkpoints (privileged inputs) are refused: they cannot be deployed.
- a **dataset**: the Zarr episode store itself as a dataset repo (lossless, with its crash-safety metadata,
  readable by `xr0` directly after `dataset pull`). A store with an interrupted episode is refused until
  `xr0 dataset repair`. For LeRobot users, `xr0 dataset export-lerobot` writes a LeRobotDataset v3 folder
  that `hf upload --repo-type dataset` (or lerobot's own `push_to_hub`) publishes.

Credentials are huggingface_hub's own (`hf auth login`, or HF_TOKEN). Any failure to reach the Hub — offline,
no token, no such repo — is one sentence naming the repo.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import UserError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

CHECKPOINT_IGNORE = ["resume/*", "*.tmp", "*.tmp/*"]


def check_repo_id(repo_id: str) -> str:
    """The repo id as the Hub will accept it (user/name), or one sentence saying why not."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1:
        raise UserError(f"--repo-id {repo_id!r}: a Hub repo id is USER/NAME (or ORG/NAME)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--repo-id {repo_id!r}: the Hub would reject it ({str(e).split(':')[0]})") from e
    return repo_id


def _hub_failure(action: str, repo_id: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    detail = f"{type(e).__name__}: {first}"[:200]
    return UserError(
        f"could not {action} {repo_id} on the Hugging Face Hub ({detail}); check the network, the repo id, "
        "and your token (`hf auth login` or HF_TOKEN)"
    )


# -- checkpoints ----------------------------------------------------------------------------------------------
def model_card(checkpoint: Path, repo_id: str) -> str:
    """README.md for a checkpoint: what it is and the deployment contract it carries."""
    from xr0.contract import DeployContract

    contract = DeployContract.load(checkpoint)
    training = _json(checkpoint / "training.json")
    lines = [
        "---",
        "library_name: xr0-workstation",
        "tags: [robotics, xr0, vla, aloha]",
        "---",
        f"# {repo_id}",
        "",
        "An XR0 (Xiaomi-Robotics-0) checkpoint trained with xr0-workstation. Run it with",
        "",
        "```bash",
        f"xr0 model pull --repo-id {repo_id} --out checkpoints/{repo_id.split('/')[1]}",
        f"xr0 eval --policy checkpoints/{repo_id.split('/')[1]} --episodes 50      # simulator, held-out seeds",
        f"xr0 rollout --policy checkpoints/{repo_id.split('/')[1]} --robot aloha",
        "```",
        "",
        "## Deployment contract (`deploy.json`)",
        "",
        "A rig that does not match is refused with one sentence naming both sides.",
        "",
    ]
    if contract is None:
        lines.append("This checkpoint has no deploy.json: cameras and rate come from the user's config.")
    else:
        cams = ", ".join(f"`{c.name}` ({c.width}×{c.height})" for c in contract.cameras)
        relative = [n for n, r in zip(contract.joint_names, contract.relative, strict=True) if r]
        lines += [
            "| | |",
            "|---|---|",
            f"| robot type | `{contract.robot_type}` |",
            f"| cameras, in prompt order | {cams} |",
            f"| image budget | {contract.max_pixels} pixels per view |",
            f"| control rate | {contract.fps:g} Hz |",
            f"| chunk length / longest prefix | {contract.chunk_length} / {contract.max_prefix} |",
            f"| joints | {', '.join(contract.joint_names)} |",
            f"| relative to the state | {', '.join(relative) or 'none'} (the others absolute) |",
            f"| gripper range | {list(contract.gripper_range)} (fraction of the opening) |",
            f"| state | {'normalised (statistics in the processor files)' if contract.state_normalised else 'raw'} |",
            f"| instructions | {'; '.join(contract.instructions) or '—'} |",
            f"| training episodes | {len(contract.seeds)} simulator seeds (evaluate on others) |",
        ]
    if training:
        lines += ["", "## Training", ""]
        for key in ("init", "mode", "steps", "batch_size", "lr"):
            if key in training:
                lines.append(f"- {key}: `{training[key]}`")
    return "\n".join(lines) + "\n"


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def push_checkpoint(checkpoint: Path, repo_id: str, private: bool = False, api: HfApi | None = None) -> str:
    """Upload a checkpoint directory (without its resume state) and its model card; returns the URL."""
    from xr0.checkpoint import CheckpointError, read_config
    from xr0.contract import ContractError, DeployContract

    check_repo_id(repo_id)
    checkpoint = checkpoint.resolve()
    try:
        read_config(checkpoint)
        contract = DeployContract.load(checkpoint)
    except (CheckpointError, ContractError) as e:
        raise UserError(str(e)) from e
    if contract is not None and contract.privileged:
        raise UserError(
            f"{checkpoint} reads privileged simulator inputs ({', '.join(contract.privileged)}): a diagnostic "
            "model, not one to share for deployment"
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "README.md"
            card.write_text(model_card(checkpoint, repo_id))
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(checkpoint),
                ignore_patterns=CHECKPOINT_IGNORE,
                commit_message=f"xr0-workstation checkpoint {checkpoint.name}",
            )
            api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo_id)
    except Exception as e:  # the hub client raises many kinds (offline, auth, HTTP errors)
        raise _hub_failure("push the checkpoint to", repo_id, e) from e
    return str(url)


def pull_checkpoint(repo_id: str, out: Path) -> Path:
    """Download a checkpoint into `out` and check that it is one (config, weights layout, contract)."""
    from huggingface_hub import snapshot_download

    from xr0.checkpoint import CheckpointError, read_config
    from xr0.contract import ContractError, DeployContract

    check_repo_id(repo_id)
    try:
        snapshot_download(repo_id=repo_id, local_dir=str(out))
    except Exception as e:
        raise _hub_failure("download the checkpoint", repo_id, e) from e
    try:
        read_config(out)
        DeployContract.load(out)
    except (CheckpointError, ContractError) as e:
        raise UserError(f"{repo_id} was downloaded to {out} but is not an XR0 checkpoint: {e}") from e
    return out


# -- datasets -------------------------------------------------------------------------------------------------
def push_dataset(store: Path, repo_id: str, private: bool = False, api: HfApi | None = None) -> str:
    """Upload a whole, valid episode store as a dataset repo; returns the URL."""
    from recording.integrity import validate
    from recording.schema import StoreError

    check_repo_id(repo_id)
    try:
        report = validate(store)
    except StoreError as e:
        raise UserError(str(e)) from e
    if not report.ok:
        problems = [f"partial episode {p.index}" for p in report.partial] + list(report.problems)
        raise UserError(
            f"dataset {store} is not ready to share ({'; '.join(problems[:3])}): run `xr0 dataset repair "
            f"--dataset {store}` first"
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(store),
            ignore_patterns=["*.partial", "*.partial/*"],
            commit_message=f"xr0-workstation episode store {store.name}",
        )
    except Exception as e:
        raise _hub_failure("push the dataset to", repo_id, e) from e
    return str(url)


def pull_dataset(repo_id: str, out: Path) -> Path:
    """Download an episode store into `out` (a new folder) and validate it."""
    from huggingface_hub import snapshot_download

    from recording.integrity import validate

    check_repo_id(repo_id)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--dataset {out} already exists and is not empty; pull into a new path")
    try:
        snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=str(out))
    except Exception as e:
        raise _hub_failure("download the dataset", repo_id, e) from e
    from recording.schema import StoreError

    try:
        report = validate(out)
    except StoreError as e:
        raise UserError(f"{repo_id} was downloaded to {out} but is not an episode store: {e}") from e
    if not report.ok:
        raise UserError(f"{repo_id} was downloaded to {out} but does not validate: {report.problems[:2]}")
    return out
