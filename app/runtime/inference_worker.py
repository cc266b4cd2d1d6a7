"""The inference worker: runs `policy.infer` off the control thread, one request at a time.

The control thread `submit`s a request and `poll`s once per tick; neither ever waits for the policy on the
wall clock. When an answer is *available* depends on the clock:

- **wall clock** (hardware, `sim_timing: realtime`): when the policy call really returned.
- **simulated clock** (lockstep): the policy still runs in this worker thread, but its answer becomes
  available at `submit time + latency` in simulated time, where the latency is what the policy reports in
  `chunk.timing_ms["total"]` (a scripted policy's injected latency, a remote policy's round trip) or else
  the measured wall time of the call. `poll` then waits (in wall time, while simulated time stands still)
  for the call to finish so that the tick an answer lands on is decided by the model, not by how busy the
  machine was — the same scheduler code is deterministic under a `SimClock`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from app.runtime.schedule import Request
from drivers.clock import Clock
from xr0.boundary import Chunk, Policy, PolicyObservation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    request: Request
    chunk: Chunk | None  # None when the policy raised
    error: str | None  # the policy's exception as a sentence
    ready_ns: int  # when the answer is (or was) available, on the loop's clock
    inference_ms: float  # wall time of the call (lockstep: the modelled latency)


class InferenceWorker:
    def __init__(
        self, policy: Policy, clock: Clock, simulated: bool, lockstep_timeout_s: float = 600.0
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.simulated = simulated
        self.lockstep_timeout_s = lockstep_timeout_s
        self._cv = threading.Condition()
        self._job: tuple[Request, PolicyObservation, int] | None = None
        self._done: Completed | None = None
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
            self._thread.start()

    @property
    def busy(self) -> bool:
        """A request was submitted and its answer not yet handed back by `poll`."""
        with self._cv:
            return self._busy

    def submit(self, request: Request, observation: PolicyObservation) -> None:
        """Hand a request to the worker thread; returns at once."""
        with self._cv:
            if self._busy:
                raise RuntimeError(f"the inference worker is busy; request {request.id} must wait")
            self._job = (request, observation, self.clock.now_ns())
            self._busy = True
            self._cv.notify_all()

    def poll(self) -> Completed | None:
        """The finished answer if it is available at the clock's current time, else None."""
        with self._cv:
            if not self._busy:
                return None
            if self.simulated and self._done is None:
                deadline = time.monotonic() + self.lockstep_timeout_s
                while self._done is None and not self._closing:
                    if not self._cv.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise TimeoutError(
                            f"the policy did not answer within {self.lockstep_timeout_s:.0f} s of wall time"
                        )
            done = self._done
            if done is None or self.clock.now_ns() < done.ready_ns:
                return None
            self._done = None
            self._busy = False
            self._cv.notify_all()
            return done

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until the request in flight (if any) finished, and drop its answer. True when idle."""
        end = time.monotonic() + timeout_s
        with self._cv:
            while self._busy and self._done is None and not self._closing:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(timeout=left)
            self._done = None
            self._busy = False
            return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread; a policy call still running is left to finish on its own (daemon thread)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.warning("the policy was still answering when the runner stopped; not waiting for it")

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
                request, observation, submit_ns = self._job
                self._job = None
            t0 = time.perf_counter()
            chunk, error = None, None
            try:
                chunk = self.policy.infer(observation, request.prefix)
            except Exception as e:  # noqa: BLE001 - any policy failure becomes a counted, reported event
                error = f"{type(e).__name__}: {e}"
            wall_ms = (time.perf_counter() - t0) * 1e3
            if self.simulated:
                ms = float(chunk.timing_ms.get("total", wall_ms)) if chunk is not None else wall_ms
                ready = submit_ns + round(ms * 1e6)
            else:
                ms = wall_ms
                ready = self.clock.now_ns()
            with self._cv:
                self._done = Completed(request, chunk, error, ready, ms)
                self._cv.notify_all()
