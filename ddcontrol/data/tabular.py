"""Measured data without a simulator: arrays, CSV files and data frames as a TrajectoryDataset.

A measured dataset has inputs and outputs only. Its ``x`` has zero columns (shape (N, T + 1, 0):
there is no state to verify against), its metadata say ``simulator: "none"`` and
``state_source: "none"``, and everything that needs a simulator (replay verification) is
skipped and says so; training, planning and the tracker as a policy work as for simulated data.

Tables: each experiment is a table of rows (samples) and named columns; the inputs and outputs
are named columns. One table per experiment (a list of CSV files or frames), or one table with an
``episode`` column (rows of an experiment in order, experiments in order of first appearance).
An optional ``time`` column is checked for uniform sampling and gives ``dt``. CSV files are read
with the standard library (a header line, comma-separated numbers); pandas is never imported
here: a data frame is read through ``frame.columns`` and ``frame[name].to_numpy()``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddcontrol import __version__
from ddcontrol.errors import ConfigurationError, DataFormatError, DimensionError, NonFiniteError

#: Relative tolerance of the uniform-sampling check on a time column.
DT_RTOL = 1e-6


def _stack(arrays: Any, name: str) -> np.ndarray:
    """(N, T, c) from one (N, T, c) / (T, c) / (T,) array or a sequence of (T_i, c) arrays."""
    if isinstance(arrays, np.ndarray) or np.isscalar(arrays):
        arr = np.asarray(arrays, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :, None]
        elif arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DimensionError(f"{name} must be (N, T, channels), (T, channels) or a list of "
                                 f"(T, channels) arrays, got shape {arr.shape}")
        return arr
    items = [np.asarray(a, dtype=np.float64) for a in arrays]
    if not items:
        raise DimensionError(f"{name} holds no experiment")
    items = [a[:, None] if a.ndim == 1 else a for a in items]
    for i, a in enumerate(items):
        if a.ndim != 2:
            raise DimensionError(f"{name}[{i}] must be (T, channels), got shape {a.shape}")
        if a.shape[1] != items[0].shape[1]:
            raise DimensionError(f"{name}[{i}] has {a.shape[1]} channels, {name}[0] has "
                                 f"{items[0].shape[1]}")
    lengths = [len(a) for a in items]
    if len(set(lengths)) > 1:
        raise DimensionError(f"ragged lengths in {name}: experiments have {_describe(lengths)} "
                             "samples; trim them to a common length (truncate=True keeps the "
                             "first min(T_i) samples of each)")
    return np.stack(items)


def _describe(lengths: Sequence[int]) -> str:
    pairs = [f"#{i}: {n}" for i, n in enumerate(lengths)]
    return ", ".join(pairs[:8]) + (", ..." if len(pairs) > 8 else "")


def _first_nonfinite(arr: np.ndarray, name: str, names: Sequence[str]) -> str:
    i, k, c = (int(v) for v in np.argwhere(~np.isfinite(arr))[0])
    return (f"{name} contains NaN or inf (experiment {i}, sample {k}, channel {names[c]!r}); "
            "drop or interpolate the missing samples first")


def _names(names: Sequence[str] | None, count: int, prefix: str, what: str) -> list[str]:
    if names is None:
        return [f"{prefix}{j}" for j in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise DimensionError(f"{what} has {len(names)} names for {count} channels")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{what} repeats a name: {names}")
    return names


def _bounds(value: Any, data: np.ndarray, name: str) -> tuple[list[float], bool]:
    m = data.shape[-1]
    if value is None:
        return [], False
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (m,)).copy()
    if np.any(np.isnan(arr)):
        raise NonFiniteError(f"{name} contains NaN")
    return arr.tolist(), True


def dataset_from_arrays(u: Any, y: Any, *, dt: float = 1.0,
                        input_names: Sequence[str] | None = None,
                        output_names: Sequence[str] | None = None,
                        input_low: Any = None, input_high: Any = None,
                        truncate: bool = False, metadata: Mapping[str, Any] | None = None) -> Any:
    """A :class:`~ddcontrol.data.TrajectoryDataset` from measured inputs and outputs.

    Parameters
    ----------
    u, y : ndarray (N, T, m) / (N, T, p), or (T, m) / (T, p) for one experiment, or sequences of
        (T_i, m) / (T_i, p) arrays, one per experiment
        Physical units; ``y[:, k]`` measured before ``u[:, k]`` is applied.
    dt : float
        Sampling time in seconds.
    input_names, output_names : sequence of str, optional
        Channel names (default ``u0 ..``, ``y0 ..``).
    input_low, input_high : scalar or (m,), optional
        Actuator limits used by planning (default: the range the data cover, recorded as
        ``metadata["input_bounds"] = "data range"``).
    truncate : bool
        Experiments of different lengths: keep the first min(T_i) samples of each instead of
        raising.
    metadata : mapping, optional
        Extra metadata entries (they cannot override the ones set here).

    Raises
    ------
    DimensionError
        Wrong shapes, ragged lengths (without ``truncate``), u and y disagreeing on experiments
        or samples, names of the wrong count.
    NonFiniteError
        NaN or inf in the data (the first one is located).
    ConfigurationError
        Non-positive ``dt``, ``input_low > input_high``.
    """
    from ddcontrol.data.dataset import TrajectoryDataset

    if truncate and not isinstance(u, np.ndarray):
        n_min = min(min(len(a) for a in u), min(len(a) for a in y))
        u = [np.asarray(a)[:n_min] for a in u]
        y = [np.asarray(a)[:n_min] for a in y]
    u_arr, y_arr = _stack(u, "u"), _stack(y, "y")
    if u_arr.shape[:2] != y_arr.shape[:2]:
        raise DimensionError(f"u {u_arr.shape} and y {y_arr.shape} disagree on (experiments, "
                             "samples)")
    if u_arr.shape[1] < 1:
        raise DimensionError("the experiments hold no sample")
    if not isinstance(dt, (int, float, np.floating)) or not np.isfinite(dt) or dt <= 0:
        raise ConfigurationError(f"dt must be a positive number of seconds, got {dt!r}")
    in_names = _names(input_names, u_arr.shape[2], "u", "input_names")
    out_names = _names(output_names, y_arr.shape[2], "y", "output_names")
    for arr, name, names in ((u_arr, "u", in_names), (y_arr, "y", out_names)):
        if not np.all(np.isfinite(arr)):
            raise NonFiniteError(_first_nonfinite(arr, name, names))
    low, low_given = _bounds(input_low, u_arr, "input_low")
    high, high_given = _bounds(input_high, u_arr, "input_high")
    if not low_given:
        low = u_arr.min(axis=(0, 1)).tolist()
    if not high_given:
        high = u_arr.max(axis=(0, 1)).tolist()
    if np.any(np.asarray(low) > np.asarray(high)):
        raise ConfigurationError(f"input_low {low} exceeds input_high {high}")
    meta: dict[str, Any] = dict(metadata or {})
    meta.update({
        "env_id": None,
        "env_kwargs": {},
        "simulator": "none",
        "source": meta.get("source", "arrays"),
        "dt": float(dt),
        "input_names": in_names,
        "output_names": out_names,
        "state_names": [],
        "state_source": "none",
        "input_low": low,
        "input_high": high,
        "input_bounds": "given" if (low_given and high_given) else (
            "data range" if not (low_given or high_given) else "given and data range"),
        "ddcontrol_version": __version__,
    })
    n, t, _ = u_arr.shape
    return TrajectoryDataset(u=u_arr, y=y_arr, x=np.zeros((n, t + 1, 0)), metadata=meta)


# -- tables -------------------------------------------------------------------------------------
def _split_names(names: str | Sequence[str], what: str) -> list[str]:
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",")]
    names = [str(n) for n in names if str(n)]
    if not names:
        raise ConfigurationError(f"name at least one {what} column")
    return names


def read_csv_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a CSV file (header line, comma-separated numbers; empty cell or ``nan`` →
    NaN) as float64 arrays, in file order.

    Raises
    ------
    DataFormatError
        Missing or empty file, no header, a duplicated column name, a row with the wrong number
        of cells, a cell that is not a number (with its line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"CSV file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataFormatError(f"{path} is empty or has no header line")
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise DataFormatError(f"{path}: duplicated column names {dup}")
        rows: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataFormatError(f"{path}, line {line}: {len(row)} cells, the header has "
                                      f"{len(header)}")
            values = []
            for name, cell in zip(header, row):
                cell = cell.strip()
                try:
                    values.append(float(cell) if cell else float("nan"))
                except ValueError:
                    raise DataFormatError(f"{path}, line {line}, column {name!r}: {cell!r} is not "
                                          "a number") from None
            rows.append(values)
    if not rows:
        raise DataFormatError(f"{path} has a header but no data rows")
    table = np.array(rows, dtype=np.float64)
    return {name: table[:, j] for j, name in enumerate(header)}


def _frame_table(frame: Any, label: str) -> dict[str, np.ndarray]:
    columns = getattr(frame, "columns", None)
    if columns is None:
        raise ConfigurationError(f"{label} is not a data frame (no .columns)")
    out = {}
    for name in columns:
        try:
            out[str(name)] = np.asarray(frame[name].to_numpy(), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            out[str(name)] = exc  # reported only if the column is used
    return out


def _column(table: Mapping[str, Any], name: str, source: str) -> np.ndarray:
    if name not in table:
        raise DataFormatError(f"{source}: missing column {name!r}; it has {list(table)}")
    col = table[name]
    if isinstance(col, Exception):
        raise DataFormatError(f"{source}: column {name!r} is not numeric ({col})")
    return col


def _check_time(t: np.ndarray, source: str, dt: float | None) -> float:
    """dt of a uniformly sampled, increasing time column (or raise)."""
    if len(t) < 2:
        if dt is None:
            raise DataFormatError(f"{source}: one sample cannot give dt; pass dt=")
        return dt
    if not np.all(np.isfinite(t)):
        k = int(np.argmax(~np.isfinite(t)))
        raise NonFiniteError(f"{source}: the time column has NaN or inf at row {k}")
    d = np.diff(t)
    step = float(np.median(d))
    if step <= 0:
        raise DataFormatError(f"{source}: the time column does not increase")
    bad = np.abs(d - step) > DT_RTOL * max(abs(step), 1e-300) + 1e-12 * np.abs(t[1:])
    if np.any(bad):
        k = int(np.argmax(bad))
        raise DataFormatError(f"{source}: non-uniform sampling: time step {d[k]:.6g} between rows "
                              f"{k} and {k + 1} (t = {t[k]:.6g} → {t[k + 1]:.6g}), median step "
                              f"{step:.6g}; resample to a uniform grid first")
    if dt is not None and abs(step - dt) > DT_RTOL * dt:
        raise DataFormatError(f"{source}: the time column steps by {step:.6g} s, dt={dt} given")
    return step


def dataset_from_tables(tables: Sequence[Mapping[str, Any]], sources: Sequence[str], *,
                        inputs: str | Sequence[str], outputs: str | Sequence[str],
                        time: str | None = None, episode: str | None = None,
                        dt: float | None = None, input_low: Any = None, input_high: Any = None,
                        truncate: bool = False, source: str = "table") -> Any:
    """A dataset from tables of named columns (see the module docstring); ``sources`` name each
    table in error messages. ``dt`` defaults to the time column's step, else 1.0."""
    in_cols = _split_names(inputs, "input")
    out_cols = _split_names(outputs, "output")
    both = set(in_cols) & set(out_cols)
    if both:
        raise ConfigurationError(f"columns {sorted(both)} are named as inputs and as outputs")
    if dt is not None and (not np.isfinite(dt) or dt <= 0):
        raise ConfigurationError(f"dt must be a positive number of seconds, got {dt!r}")
    us, ys, labels = [], [], []
    dts: list[float] = []
    for table, src in zip(tables, sources):
        if episode is not None:
            ep = _column(table, episode, src)
            if np.any(~np.isfinite(ep)):
                raise NonFiniteError(f"{src}: the episode column {episode!r} has empty cells")
            keys = list(dict.fromkeys(ep.tolist()))
            parts = [(np.flatnonzero(ep == key), f"{src}, episode {key:g}") for key in keys]
        else:
            n_rows = len(next(iter(table.values()))) if table else 0
            parts = [(np.arange(n_rows), src)]
        for rows, label in parts:
            u = np.stack([_column(table, c, src)[rows] for c in in_cols], axis=1)
            y = np.stack([_column(table, c, src)[rows] for c in out_cols], axis=1)
            for arr, cols in ((u, in_cols), (y, out_cols)):
                bad = ~np.isfinite(arr)
                if np.any(bad):
                    k, c = (int(v) for v in np.argwhere(bad)[0])
                    raise NonFiniteError(f"{label}: column {cols[c]!r} has NaN or an empty cell "
                                         f"at row {k} of the experiment; drop or interpolate "
                                         "the missing samples first")
            if time is not None:
                dts.append(_check_time(_column(table, time, src)[rows], label, dt))
            us.append(u)
            ys.append(y)
            labels.append(label)
    if not us:
        raise DataFormatError("no experiment found")
    if dts and max(dts) - min(dts) > DT_RTOL * max(dts):
        raise DataFormatError(f"experiments are sampled at different rates: dt from "
                              f"{min(dts):.6g} to {max(dts):.6g} s")
    lengths = [len(u) for u in us]
    if len(set(lengths)) > 1 and not truncate:
        pairs = ", ".join(f"{lab}: {n}" for lab, n in list(zip(labels, lengths))[:6])
        raise DimensionError(f"ragged lengths: experiments have different numbers of samples "
                             f"({pairs}{', ...' if len(labels) > 6 else ''}); trim them to a "
                             "common length or pass truncate=True (--truncate) to keep the first "
                             f"{min(lengths)} samples of each")
    step = dt if dt is not None else (dts[0] if dts else 1.0)
    meta = {"source": source, "experiments": labels, "dt_known": bool(dt is not None or dts),
            "columns": {"inputs": in_cols, "outputs": out_cols, "time": time,
                        "episode": episode}}
    return dataset_from_arrays(us, ys, dt=step, input_names=in_cols, output_names=out_cols,
                               input_low=input_low, input_high=input_high, truncate=truncate,
                               metadata=meta)


def dataset_from_csv(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                     inputs: str | Sequence[str], outputs: str | Sequence[str],
                     time: str | None = None, episode: str | None = None,
                     dt: float | None = None, input_low: Any = None, input_high: Any = None,
                     truncate: bool = False) -> Any:
    """A dataset from one CSV file per experiment, or one file with an ``episode`` column.

    Parameters
    ----------
    paths : path or sequence of paths
    inputs, outputs : comma-separated str or sequence of str
        Column names of the inputs and of the outputs.
    time : str, optional
        Time column (seconds): checked for uniform, increasing sampling; gives ``dt``.
    episode : str, optional
        Column that numbers the experiments inside each file.
    dt : float, optional
        Sampling time (default: from ``time``, else 1.0 with ``metadata["dt_known"] = False``).
    input_low, input_high, truncate
        As in :func:`dataset_from_arrays`.

    Raises
    ------
    DataFormatError
        Unreadable file, missing column, non-numeric cell, non-uniform sampling.
    DimensionError, NonFiniteError
        Ragged lengths, NaN / empty cells.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigurationError("give at least one CSV file")
    tables = [read_csv_table(p) for p in paths]
    return dataset_from_tables(tables, [str(p) for p in paths], inputs=inputs, outputs=outputs,
                               time=time, episode=episode, dt=dt, input_low=input_low,
                               input_high=input_high, truncate=truncate, source="csv")


def dataset_from_frames(frames: Any, *, inputs: str | Sequence[str],
                        outputs: str | Sequence[str], time: str | None = None,
                        episode: str | None = None, dt: float | None = None,
                        input_low: Any = None, input_high: Any = None,
                        truncate: bool = False) -> Any:
    """A dataset from one pandas ``DataFrame`` per experiment, or one with an ``episode``
    column; arguments as :func:`dataset_from_csv`. pandas is not imported: any object with
    ``.columns`` and ``frame[name].to_numpy()`` works."""
    if hasattr(frames, "columns"):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise ConfigurationError("give at least one data frame")
    tables = [_frame_table(f, f"frame {i}") for i, f in enumerate(frames)]
    return dataset_from_tables(tables, [f"frame {i}" for i in range(len(frames))], inputs=inputs,
                               outputs=outputs, time=time, episode=episode, dt=dt,
                               input_low=input_low, input_high=input_high, truncate=truncate,
                               source="dataframe")
