"""Group slice headers into stacks: one SeriesInstanceUID, split when it holds several stacks.

Slices are grouped by SeriesInstanceUID, then one UID that holds several stacks is split (when
``split_stacks=True``, the default) by, in this order: image size (Rows/Columns), StackID (multi-frame files),
orientation (ImageOrientationPatient within ``geometry.ORIENTATION_TOL``), EchoNumbers (EffectiveEchoTime for
multi-frame files), and, only when the group still has slices at the same position, TemporalPositionIdentifier
(TemporalPositionIndex) or else AcquisitionNumber. Each resulting stack gets a ``stack_id``
``"<series uid>#<suffixes>"`` (e.g. ``"1.2.3#echo2"``, ``"1.2.3#axial"``); an unsplit series' ``stack_id`` is its
UID. With ``split_stacks=False`` such mixtures are left in one stack, whose geometry checks report them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from medseg.data.dicom.geometry import ORIENTATION_TOL, plane_name, same_orientation
from medseg.data.dicom.records import SliceHeader

__all__ = ["group_stacks"]


def _split(
    groups: list[tuple[str, list[SliceHeader]]],
    key: Callable[[SliceHeader], object],
    label: Callable[[object], str],
) -> list[tuple[str, list[SliceHeader]]]:
    out: list[tuple[str, list[SliceHeader]]] = []
    for suffix, headers in groups:
        buckets: dict[object, list[SliceHeader]] = {}
        for h in headers:
            buckets.setdefault(key(h), []).append(h)
        if len(buckets) == 1:
            out.append((suffix, headers))
            continue
        for value in sorted(buckets, key=lambda v: (len(str(v)), str(v))):  # "2" before "10"
            out.append((suffix + label(value), buckets[value]))
    return out


def _split_orientation(groups: list[tuple[str, list[SliceHeader]]]) -> list[tuple[str, list[SliceHeader]]]:
    out: list[tuple[str, list[SliceHeader]]] = []
    for suffix, headers in groups:
        clusters: list[list[SliceHeader]] = []
        unoriented: list[SliceHeader] = []
        for h in headers:
            if h.orientation is None:
                unoriented.append(h)
                continue
            for cluster in clusters:
                if same_orientation(cluster[0].orientation, h.orientation, ORIENTATION_TOL):
                    cluster.append(h)
                    break
            else:
                clusters.append([h])
        if len(clusters) <= 1:
            out.append((suffix, headers))
            continue
        clusters.sort(key=len, reverse=True)
        clusters[0].extend(unoriented)  # keep them in a stack so it reports MISSING_GEOMETRY
        seen: dict[str, int] = {}
        for cluster in clusters:
            plane = plane_name(cluster[0].orientation)
            seen[plane] = seen.get(plane, 0) + 1
            name = plane if seen[plane] == 1 else f"{plane}{seen[plane]}"
            out.append((f"{suffix}#{name}", cluster))
    return out


def _has_duplicate_positions(headers: Sequence[SliceHeader]) -> bool:
    positions = [tuple(round(v, 3) for v in h.position) for h in headers if h.position is not None]
    return len(set(positions)) < len(positions)


def group_stacks(
    headers: Sequence[SliceHeader], *, split_stacks: bool = True
) -> list[tuple[str, list[SliceHeader]]]:
    """Group slice headers into stacks: ``[(stack_id, headers), ...]`` (see the module docstring)."""
    by_uid: dict[str, list[SliceHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, []).append(h)
    stacks: list[tuple[str, list[SliceHeader]]] = []
    for uid, members in by_uid.items():
        groups = [("", members)]
        if split_stacks:
            groups = _split(groups, lambda h: (h.columns, h.rows), lambda v: f"#{v[0]}x{v[1]}")
            groups = _split(groups, lambda h: h.stack, lambda v: f"#stack{v or 'none'}")
            groups = _split_orientation(groups)
            groups = _split(groups, lambda h: h.echo_number, lambda v: f"#echo{v or 'none'}")
            split_groups = []
            for suffix, group in groups:
                parts = [(suffix, group)]
                if _has_duplicate_positions(group):
                    if len({h.temporal_position for h in group}) > 1:
                        parts = _split(parts, lambda h: h.temporal_position, lambda v: f"#t{v or 'none'}")
                    elif len({h.acquisition_number for h in group}) > 1:
                        parts = _split(parts, lambda h: h.acquisition_number, lambda v: f"#acq{v or 'none'}")
                split_groups.extend(parts)
            groups = split_groups
        stacks.extend((uid + suffix, group) for suffix, group in groups)
    return stacks
