"""The one interface every generator implements: a cleaned video in, grounded items out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

from damo_lit.augment.items import GroundedItem, QuestionSpec, Video


class BackendError(RuntimeError):
    """A backend that cannot work at all (bad endpoint, missing key, model not found): stop the run."""


@dataclass
class Generation:
    """What a backend produced for one video.

    `rejects` counts what the backend itself had to throw away (a malformed reply after its
    retries, a malformed item); `complete` is False when the video could not be processed this
    time (e.g. the endpoint kept failing) and should be tried again on the next run.
    `requests` counts every request sent for the video (what a paid endpoint bills), `retries`
    those of them that repeated a failed try; `cache_hits` the replies the cache answered.
    """

    items: list[GroundedItem] = field(default_factory=list)
    rejects: Counter = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    complete: bool = True
    error: str | None = None

    def sent(self, retry: bool = False) -> None:
        """One request went out (counted before its answer: a failed or refused one costs too)."""
        self.requests += 1
        self.retries += bool(retry)


class Backend(ABC):
    """A generator of temporally grounded QA pairs and dialogues.

    `generator` is what records carry in meta["generator"]; `concurrency` is how many videos
    the pipeline may hand to `generate` at once (from that many threads).
    """

    generator: str = "backend"
    concurrency: int = 1

    @abstractmethod
    def generate(self, video: Video, spec: QuestionSpec) -> Generation:
        """Generate items for one video; never raises for a per-video failure (see Generation)."""

    def fingerprint(self) -> dict:
        """The settings that change what is generated (a resumed run must match them)."""
        return {"generator": self.generator}

    def start(self) -> None:
        """A run begins: a backend stopped by an earlier run's interrupt may work again."""

    def stop(self) -> None:
        """The run is interrupted or failed: `generate` calls still in flight (in worker threads)
        should return soon rather than wait out a backoff, so that the process can exit."""

    def close(self) -> None:
        """Release what the backend holds (connections, a model)."""
