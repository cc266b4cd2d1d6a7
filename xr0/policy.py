"""`XR0Policy`: the XR0 model behind the policy boundary (xr0.boundary, DESIGN.md §6).

It takes the robot's 14-wide observation and committed prefix (absolute, robot units) and returns a chunk
of 14-wide absolute targets whose first P rows are the prefix. In between (one function each way):

- **layout**: the 14 values go to their places in XR0's 32-wide bimanual layout (the official
  `compose_state`: left gripper 6, left joints 7–12, right gripper 20, right joints 21–26); the other dims
  stay 0 in the state and are masked in the actions (the checkpoint's statistics have std 0 there);
- **relative/absolute**: by default joint actions are relative to the observed state (a − s) and gripper
  actions absolute; the prefix is re-expressed against the new observation's state on the way in;
- **normalisation** with the statistics stored in the checkpoint (`(a − mean)/std` in, `a·std + mean` out);
- **images**: each configured camera becomes one labelled view of the prompt.

`infer` keeps no state between calls; several threads may share one policy.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xr0.boundary import Chunk, PolicyObservation, PolicySpec
from xr0.contract import ContractError, DeployContract, clip_grippers, stats_digest
from xr0.flow import sample_actions, seeded_noise
from xr0.model import XR0Model
from xr0.processor import STD_ACTIVE, XR0Processor
from xr0.sampler import ChunkSampler, one_request, place_prefix

log = logging.getLogger(__name__)

# The 14-vector order of DESIGN.md §3 (drivers/joints.py): left waist … wrist_rotate, left gripper, then
# the right arm. Entry k of the 14-vector lives at XR0 index XR0_INDEX[k].
STATE_DIM = 14
XR0_INDEX: tuple[int, ...] = (7, 8, 9, 10, 11, 12, 6, 21, 22, 23, 24, 25, 26, 20)
# Joints relative to the observation, grippers absolute (the openpi/ALOHA convention).
RELATIVE_JOINTS: tuple[bool, ...] = (True,) * 6 + (False,) + (True,) * 6 + (False,)
GRIPPER_INDICES = (6, 13)  # the two grippers in the 14-wide robot vector (drivers.joints order)
GRIPPER_RANGE = (0.0, 1.0)  # a gripper target is a fraction of the opening: 0 closed … 1 open
# Camera name → the view label the prompt uses ([PT] data format: Ego, Left-Wrist, Right-Wrist).
VIEW_LABELS: dict[str, str] = {
    "cam_high": "Ego View",
    "cam_left_wrist": "Left-Wrist View",
    "cam_right_wrist": "Right-Wrist View",
    "cam_low": "Low View",
}


@dataclass(frozen=True)
class XR0PolicyConfig:
    # Key of the checkpoint's action statistics (`action_config`) for this robot.
    robot_type: str = "aloha"
    # Cameras the policy reads, in prompt order (one to four of VIEW_LABELS).
    cameras: tuple[str, ...] = ("cam_high", "cam_left_wrist", "cam_right_wrist")
    # Per entry of the 14-vector: True = the model predicts a − state (joints), False = absolute (grippers).
    # Must match how the checkpoint was trained.
    relative: tuple[bool, ...] = field(default=RELATIVE_JOINTS)
    # Euler steps per chunk; None uses the checkpoint's num_steps (5).
    num_steps: int | None = None
    # Noise seed; None derives one from the observation (state, prefix, instruction, time), so the same
    # observation gives the same chunk, like the official eval clients' input hash.
    seed: int | None = None
    # Control rate the actions are spaced for (Hz).
    fps: float = 30.0
    # DiT sampling: "fused" (xr0/sampler.py: the inference path) or "reference" (`sample_actions` over
    # `XR0Model.velocity`, the training path; for comparisons).
    sampler: str = "fused"
    # Compile the fused sampler's Euler steps with torch.compile: the first chunk of each shape compiles
    # (a minute or two on a CPU, cached on disk), then the DiT runs about twice as fast on a CPU.
    compile: bool = False

    @classmethod
    def from_contract(cls, contract: DeployContract, **choices: Any) -> XR0PolicyConfig:
        """What the checkpoint's deployment contract fixes; `choices` (num_steps, seed) are the user's."""
        return cls(
            robot_type=contract.robot_type,
            cameras=contract.camera_names,
            relative=tuple(contract.relative),
            fps=contract.fps,
            **choices,
        )

    def __post_init__(self) -> None:
        if not 1 <= len(self.cameras) <= len(VIEW_LABELS):
            raise ValueError(
                f"cameras: one to {len(VIEW_LABELS)} cameras are needed, got {len(self.cameras)}"
            )
        for cam in self.cameras:
            if cam not in VIEW_LABELS:
                raise ValueError(
                    f"cameras: unknown camera {cam!r}; known cameras are {', '.join(VIEW_LABELS)}"
                )
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: {self.cameras} lists a camera twice")
        if len(self.relative) != STATE_DIM:
            raise ValueError(f"relative must have {STATE_DIM} entries, got {len(self.relative)}")
        if self.sampler not in ("fused", "reference"):
            raise ValueError(f"sampler must be 'fused' or 'reference', got {self.sampler!r}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")


def to_xr0(values: np.ndarray, width: int = 32) -> np.ndarray:
    """(..., 14) robot vectors → (..., 32) XR0 layout, zeros elsewhere."""
    out = np.zeros((*values.shape[:-1], width), dtype=np.float64)
    out[..., list(XR0_INDEX)] = values
    return out


# Unused dims of the 32-wide state that carry a diagnostic model's privileged inputs (contract.privileged).
PRIVILEGED_DIMS: dict[str, tuple[int, ...]] = {"object_start": (0, 1, 2)}


def state_vector(state: np.ndarray, privileged: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """(14,) robot state → (32,) raw model state; a diagnostic model's privileged inputs go to their unused
    dims (PRIVILEGED_DIMS). Training and inference share this, then `XR0Processor.normalize_state`."""
    out = to_xr0(np.asarray(state, np.float64))
    for name, value in (privileged or {}).items():
        out[list(PRIVILEGED_DIMS[name])] = np.asarray(value, np.float64)
    return out


def from_xr0(values: np.ndarray) -> np.ndarray:
    """(..., 32) XR0 layout → (..., 14) robot vectors."""
    return values[..., list(XR0_INDEX)]


def robot_to_model_actions(
    actions: np.ndarray, state: np.ndarray, relative: np.ndarray, gripper_range=GRIPPER_RANGE
) -> np.ndarray:
    """(…, T, 14) absolute robot actions and the (…, 14) state at the window start → (…, T, 32) model targets
    (relative dims as a − state), before normalisation. Training and inference share this pair; both
    clip the grippers to `gripper_range` (fractions of the opening), so the model never learns a target
    it could not be asked for."""
    actions = clip_grippers(actions, gripper_range, GRIPPER_INDICES)
    return to_xr0(actions - relative * state[..., None, :])


def model_to_robot_actions(
    actions: np.ndarray, state: np.ndarray, relative: np.ndarray, gripper_range=GRIPPER_RANGE
) -> np.ndarray:
    """The inverse: (…, T, 32) de-normalised model actions → (…, T, 14) absolute robot actions, grippers
    clipped to `gripper_range` (a decoded 1.04 means "open")."""
    return clip_grippers(from_xr0(actions) + relative * state[..., None, :], gripper_range, GRIPPER_INDICES)


def observation_seed(observation: PolicyObservation, prefix: np.ndarray) -> int:
    """SHA-256 of the state, prefix, instruction and capture time, mod 2³²."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(observation.state, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(prefix, dtype=np.float64).tobytes())
    h.update(observation.instruction.encode())
    h.update(int(observation.t_ns).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest()[:8], "little") % 2**32


class XR0Policy:
    def __init__(
        self,
        model: XR0Model,
        processor: XR0Processor,
        config: XR0PolicyConfig | None = None,
        contract: DeployContract | None = None,
    ):
        """`contract`: the checkpoint's deployment contract; when given, it fixes the cameras, the rate, the
        action representation and the gripper range (a `config` that disagrees is refused)."""
        self.model = model.eval()
        self.processor = processor
        self.contract = contract
        if contract is not None:
            config = _agree(config, contract)
        self.config = config = config or XR0PolicyConfig()
        self._sampler = ChunkSampler(model, compile=config.compile)
        rt = config.robot_type
        if rt not in processor.list_robot_types():
            raise ValueError(
                f"the checkpoint has no action statistics for robot type {rt!r} "
                f"(it has: {', '.join(processor.list_robot_types()) or 'none'}); fine-tune it on this robot's data"
            )
        self.action_mask = processor.get_action_mask(rt).to(model.device)  # (1, T, 32)
        active = self.action_mask[0, 0, list(XR0_INDEX)] > 0
        if not bool(active.all()):
            missing = [k for k in range(STATE_DIM) if not active[k]]
            raise ValueError(
                f"the checkpoint's statistics for {rt!r} mask robot dims {missing} (std ≤ {STD_ACTIVE}); "
                "it was not trained for this 14-wide bimanual layout"
            )
        T = self.action_mask.shape[1]
        if T < 2:
            raise ValueError(
                f"the checkpoint's statistics for {rt!r} give chunks of {T} action (per-dimension (A,) "
                "statistics, as the official processor reads them); the runner needs 2 or more: give "
                "per-timestep (T, A) statistics"
            )
        self.relative = np.asarray(config.relative, dtype=bool)
        self.gripper_range = (0.0, 1.0)
        max_prefix = min(model.config.max_prefix, T - 1)
        if contract is not None:
            stats = processor.action_config[rt]
            if contract.stats_sha256 and stats_digest(stats) != contract.stats_sha256:
                raise ContractError(
                    f"the checkpoint's statistics for {rt!r} are not the ones its deploy.json was "
                    "written with (the processor files were replaced?)"
                )
            if contract.state_normalised != processor.normalizes_state(rt):
                raise ContractError(
                    f"deploy.json says state_normalised {contract.state_normalised}; the processor files "
                    f"{'have' if processor.normalizes_state(rt) else 'have no'} state statistics for {rt!r}"
                )
            if contract.chunk_length != T:
                raise ContractError(
                    f"deploy.json says chunk_length {contract.chunk_length}; the statistics have T = {T}"
                )
            self.gripper_range = tuple(contract.gripper_range)
            max_prefix = min(max_prefix, contract.max_prefix)
        self.spec = PolicySpec(
            cameras=tuple(config.cameras),
            chunk_length=T,
            max_prefix=max_prefix,
            state_dim=STATE_DIM,
            fps=config.fps,
            robot_type=rt,
            privileged=() if contract is None else tuple(contract.privileged),
            contract=None if contract is None else contract.to_dict(),
        )

    def compile_sampler(self) -> None:
        """Switch the DiT's Euler steps to the compiled sampler (`XR0PolicyConfig.compile`), e.g. after
        loading a checkpoint whose contract fixed the rest of the settings."""
        if not self._sampler.compiled:
            self._sampler = ChunkSampler(self.model, compile=True)
            self.config = replace(self.config, compile=True)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        config: XR0PolicyConfig | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        local_files_only: bool = False,
    ) -> XR0Policy:
        """Load a checkpoint directory (or a Hub id you chose). On CUDA, bf16 and flash-attention-2 for the
        VLM when it is installed; SDPA otherwise."""
        from xr0.checkpoint import load_checkpoint

        attn = "sdpa"
        if torch.device(device).type == "cuda":
            dtype = dtype or torch.bfloat16
            try:
                import flash_attn  # noqa: F401

                attn = "flash_attention_2"
            except ImportError:
                log.info("flash-attn is not installed; the VLM uses PyTorch SDPA")
        model, processor = load_checkpoint(
            checkpoint,
            device=device,
            dtype=dtype,
            attn_implementation=attn,
            local_files_only=local_files_only,
        )
        contract = DeployContract.load(checkpoint) if Path(checkpoint).is_dir() else None
        if contract is None:
            log.warning(
                "%s has no deploy.json (trained before deployment contracts, or a release): cameras, "
                "rate and action representation come from the caller's settings",
                checkpoint,
            )
        return cls(model, processor, config, contract)

    # -- the boundary ----------------------------------------------------------------------------------------
    def _check(self, observation: PolicyObservation, prefix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = np.asarray(observation.state, dtype=np.float64)
        if state.shape != (STATE_DIM,) or not np.isfinite(state).all():
            raise ValueError(f"observation.state must be {STATE_DIM} finite numbers, got shape {state.shape}")
        prefix = np.asarray(prefix, dtype=np.float64)
        if prefix.size == 0:
            prefix = np.zeros((0, STATE_DIM))
        elif prefix.ndim != 2 or prefix.shape[1] != STATE_DIM:
            raise ValueError(f"prefix must have shape (P, {STATE_DIM}), got {prefix.shape}")
        if prefix.shape[0] > self.spec.max_prefix:
            raise ValueError(
                f"prefix has {prefix.shape[0]} rows; this checkpoint takes at most {self.spec.max_prefix}"
            )
        if not np.isfinite(prefix).all():
            raise ValueError("prefix has non-finite values")
        for name in self.spec.privileged:
            if name not in observation.privileged:
                raise ValueError(
                    f"observation has no privileged input {name!r}, which this diagnostic model reads"
                )
        for cam in self.spec.cameras:
            if cam not in observation.images:
                raise ValueError(
                    f"observation has no image from camera {cam!r} (it has: {', '.join(observation.images)})"
                )
        return state, prefix

    def infer(self, observation: PolicyObservation, prefix: np.ndarray) -> Chunk:
        return self.infer_batch([observation], [prefix])[0]

    def infer_batch(
        self, observations: Sequence[PolicyObservation], prefixes: Sequence[np.ndarray]
    ) -> list[Chunk]:
        """Several requests (robots) in one VLM prefill and one DiT sampling, each with its own images,
        state, prefix length and seed; each chunk equals what `infer` gives for its request alone, within
        float rounding (padding the prompts changes the order of sums). An invalid request raises before
        anything runs (the server then answers the requests one by one)."""
        if len(observations) != len(prefixes) or not observations:
            raise ValueError(
                f"{len(observations)} observations and {len(prefixes)} prefixes: one prefix each"
            )
        t0 = time.perf_counter()
        model, proc, rt = self.model, self.processor, self.config.robot_type
        device, dtype = model.device, model.dtype
        checked = [self._check(o, p) for o, p in zip(observations, prefixes, strict=True)]
        encoded, states, starts, lengths = [], [], [], []
        for observation, (state, prefix) in zip(observations, checked, strict=True):
            P = prefix.shape[0]
            seed = self.config.seed if self.config.seed is not None else observation_seed(observation, prefix)
            views = [(VIEW_LABELS[cam], observation.images[cam]) for cam in self.spec.cameras]
            encoded.append(proc.encode(observation.instruction, views))
            privileged = {name: observation.privileged[name] for name in self.spec.privileged}
            state32 = proc.normalize_state(state_vector(state, privileged), rt)  # (32,), as data.model_state
            states.append(torch.as_tensor(state32, dtype=dtype, device=device)[None, None])
            prefix_norm = None
            if P:
                # relative dims re-expressed against the new observation's state
                prefix32 = robot_to_model_actions(prefix, state, self.relative, self.gripper_range)[None]
                prefix_norm = proc.normalize_action(torch.as_tensor(prefix32, device=device), rt)
            starts.append(place_prefix(seeded_noise(seed, self.action_mask.to(dtype)), prefix_norm))
            lengths.append(P)
        inputs = encoded[0] if len(encoded) == 1 else proc.collate(encoded)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        B = len(observations)
        state32, mask = torch.cat(states), self.action_mask.expand(B, -1, -1)
        t1 = _sync(device)
        with torch.inference_mode():
            ctx = model.encode(inputs)
            t2 = _sync(device)
            if self.config.sampler == "fused":
                x = self._sampler.sample(
                    ctx, torch.cat(starts), state32, mask, lengths, self.config.num_steps
                )
            else:  # the reference path, one request at a time (its prefix length is one per call)
                x = torch.cat(
                    [
                        sample_actions(
                            model,
                            one_request(ctx, i),
                            state32[i : i + 1],
                            self.action_mask,
                            starts[i][:, :P] if P else None,
                            noise=starts[i],
                            num_steps=self.config.num_steps,
                        )
                        for i, P in enumerate(lengths)
                    ]
                )
            t3 = _sync(device)
        decoded = proc.decode_action(x, rt).cpu().double().numpy()  # (B, T, 32) robot units
        chunks = []
        for i, (state, prefix) in enumerate(checked):
            # (T, 14) absolute; grippers clipped to their range as in training. Joint targets are not
            # clipped: out-of-range joints are the runner's safety check to reject.
            actions = model_to_robot_actions(decoded[i], state, self.relative, self.gripper_range)
            actions[: prefix.shape[0]] = (
                prefix  # the model kept them fixed; copy them so they are bit-identical
            )
            chunks.append(actions)
        t4 = time.perf_counter()
        timing = {
            "preprocess": (t1 - t0) * 1e3,
            "vlm": (t2 - t1) * 1e3,
            "dit": (t3 - t2) * 1e3,
            "total": (t4 - t0) * 1e3,
            "batch": float(B),
        }
        return [Chunk(actions=a, timing_ms=dict(timing)) for a in chunks]


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _agree(config: XR0PolicyConfig | None, contract: DeployContract) -> XR0PolicyConfig:
    """The contract's settings with the caller's own choices (num_steps, seed); a caller that asks for
    other cameras, another rate or another action representation than the checkpoint was trained with
    is refused, naming both."""
    fixed = XR0PolicyConfig.from_contract(contract)
    if config is None:
        return fixed
    for name in ("robot_type", "cameras", "relative", "fps"):
        mine, theirs = getattr(config, name), getattr(fixed, name)
        if tuple(mine) != tuple(theirs) if isinstance(mine, tuple) else mine != theirs:
            raise ContractError(
                f"{name}: the checkpoint was trained with {theirs!r}; the policy settings ask for {mine!r}"
            )
    return XR0PolicyConfig.from_contract(
        contract, num_steps=config.num_steps, seed=config.seed, sampler=config.sampler, compile=config.compile
    )
