"""What a batch is asked to do: :class:`BatchRequest`, the one spelling of its fields."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal

OnBadRows = Literal["skip", "abort"]


@dataclass(frozen=True)
class BatchRequest:
    """One batch to create: an app, a source of input rows and how to run them.

    ``source``: a ``.csv``/``.jsonl`` file or a folder (one run per file, given
    as ``file_input``); None runs the fixed ``inputs`` once. ``inputs`` are
    fixed values for every row (a row's own value wins). At most
    ``max_in_flight`` runs (default ``HATZ_BATCH_MAX_IN_FLIGHT``) are submitted
    at a time. ``callback_url`` gets one ``batch.completed`` event;
    ``run_callback_url`` gets every run's own callback. With ``batch_key``, rows
    that already completed under that key are not submitted again. Bad rows
    abort the whole batch unless ``on_bad_rows="skip"``. ``metadata`` is copied
    into every run's metadata (with its ``batch_id`` and ``row``). ``client``: the
    HTTP API client that asked for it, recorded on the batch and on each of its runs.
    """

    app_id: str
    source: str | os.PathLike[str] | None = None
    _: KW_ONLY
    inputs: Mapping[str, Any] | None = None
    file_input: str | None = None
    callback_url: str | None = None
    run_callback_url: str | None = None
    max_in_flight: int | None = None
    batch_key: str | None = None
    on_bad_rows: OnBadRows = "abort"
    metadata: Mapping[str, Any] | None = None
    client: str | None = None
