"""Who attends to whom in the super-resolution (DSR) model's level-1 attention: the one source of truth.

CogView2's direct super-resolution turns a ``low_grid x low_grid`` frame (20x20 tokens) into a
``grid x grid`` frame (60x60) in one forward (SPEC.md §6.2). Its high-resolution queries attend, with one
joint softmax over both windows, to

* the high-resolution keys of a ``window_rows x window_cols`` window (9 rows x 5 columns) centred on the
  query: rows ``r - 4 .. r + 4``, columns ``c - 2 .. c + 2``;
* the low-resolution keys of a ``low_window x low_window`` window (5 x 5) centred on the low-resolution cell
  under the query, ``(r // ratio, c // ratio)`` with ``ratio = grid // low_grid`` (3);

never to text. Entries of either window that fall outside the frame are excluded. (The original CUDA
extension writes a score of -10000 there instead of -inf; the two agree unless every in-frame score of a row
is below about -9900, and the query's own key is always in frame.)

Like :mod:`.rules`, the predicates never import torch: they take Python ints or broadcastable integer
tensors. Cells are raster indices ``i = row * grid + col``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalGeometry:
    """Grid sizes and window extents of the level-1 attention (defaults: the released ``cogview2-dsr``)."""

    grid: int = 60          # high-resolution frame side, in tokens
    low_grid: int = 20      # low-resolution frame side
    window_rows: int = 9    # high-resolution window: 2 * kernel_size - 1 rows ...
    window_cols: int = 5    # ... by kernel_size columns
    low_window: int = 5     # low-resolution window side (kernel_size2)

    def __post_init__(self):
        for name in ("grid", "low_grid", "window_rows", "window_cols", "low_window"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"LocalGeometry.{name} must be positive, got {getattr(self, name)}")
        if self.grid % self.low_grid:
            raise ValueError(f"LocalGeometry: grid {self.grid} must be a multiple of low_grid {self.low_grid}")
        for name in ("window_rows", "window_cols", "low_window"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"LocalGeometry.{name} must be odd (a window centred on the query), "
                                 f"got {getattr(self, name)}")

    @property
    def ratio(self) -> int:
        """High-resolution cells per low-resolution cell along one axis (3)."""
        return self.grid // self.low_grid

    @property
    def num_queries(self) -> int:
        return self.grid * self.grid

    @property
    def num_low(self) -> int:
        return self.low_grid * self.low_grid

    @property
    def keys_per_query(self) -> int:
        """Window entries per query before clipping at the frame edge (45 + 25 = 70)."""
        return self.window_rows * self.window_cols + self.low_window * self.low_window


DSR_GEOMETRY = LocalGeometry()
"""The released model's geometry: 60x60 from 20x20, 9x5 high-resolution and 5x5 low-resolution windows."""


def high_visible(geometry: LocalGeometry, q, k):
    """Whether high-resolution query cell ``q`` sees high-resolution key cell ``k`` (raster indices)."""
    g = geometry.grid
    dr, dc = k // g - q // g, k % g - q % g
    hr, hc = geometry.window_rows // 2, geometry.window_cols // 2
    return (dr <= hr) & (dr >= -hr) & (dc <= hc) & (dc >= -hc)


def low_visible(geometry: LocalGeometry, q, k):
    """Whether high-resolution query cell ``q`` sees low-resolution key cell ``k`` (raster indices)."""
    g, lg, a = geometry.grid, geometry.low_grid, geometry.ratio
    dr, dc = k // lg - (q // g) // a, k % lg - (q % g) // a
    h = geometry.low_window // 2
    return (dr <= h) & (dr >= -h) & (dc <= h) & (dc >= -h)


def visible_count(geometry: LocalGeometry, q: int) -> int:
    """Number of keys (both windows, clipped at the frame edge) query cell ``q`` attends: ints only."""
    g, lg = geometry.grid, geometry.low_grid
    high = sum(1 for k in range(g * g) if high_visible(geometry, q, k))
    low = sum(1 for k in range(lg * lg) if low_visible(geometry, q, k))
    return high + low
