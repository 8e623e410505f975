// The attention rules of kernels/rules.py as integer arithmetic, for host and device code.
// Keep in step with rules.py: tests compare every kernel against the dense masks built from it.
#pragma once

#include <cstdint>

#include "cogvideo/window_attention.h"

namespace cogvideo {

enum QueryKind : int { kPadding = -1, kText = 0, kGiven = 1, kTarget = 2 };

// A block position's window coordinates under one rule: raster (x, y), its cyclic window groups (given rows,
// prefill) and its clamped window groups (target rows). The CPU kernel tabulates these once per launch.
struct Cell {
  int p;
  int x;
  int y;
  int cyclic_x;
  int cyclic_y;
  int clamped_x;
  int clamped_y;
};

COGVIDEO_HD int positive_mod(int a, int m) { return ((a % m) + m) % m; }

COGVIDEO_HD Cell cell_of(int p, const AttentionRule& r) {
  Cell c;
  c.p = p;
  c.x = p / r.grid;
  c.y = p % r.grid;
  c.cyclic_x = positive_mod(c.x - r.shift, r.grid) / r.window;  // roll by -shift, then partition
  c.cyclic_y = positive_mod(c.y - r.shift, r.grid) / r.window;
  c.clamped_x = (c.x + r.shift) / r.window;  // unrolled start/end, clipped to the frame
  c.clamped_y = (c.y + r.shift) / r.window;
  return c;
}

// A query's stream index decoded: kind, slot and its cell.
struct QueryPos {
  int kind;
  int slot;
  Cell cell;
};

COGVIDEO_HD QueryPos decode_query(int64_t stream_index, int text_len, const AttentionRule& r) {
  QueryPos q{kPadding, 0, Cell{0, 0, 0, 0, 0, 0, 0}};
  if (stream_index < 0) return q;
  if (stream_index < text_len) {
    q.kind = kText;
    return q;
  }
  const int rel = static_cast<int>(stream_index - text_len);  // stream indices are cache rows: they fit an int
  q.slot = rel / r.frame_len();  // (a 32-bit division: on a GPU the 64-bit one is a called routine)
  q.cell = cell_of(rel - q.slot * r.frame_len(), r);
  q.kind = q.slot < r.num_given ? kGiven : kTarget;
  return q;
}

// Whether the query sees the (valid) text keys, and whether the text bias applies to its row.
COGVIDEO_HD bool sees_text(const QueryPos& q, bool temporal) { return temporal ? q.kind > kText : q.kind >= kText; }
COGVIDEO_HD bool text_biased(const QueryPos& q, bool temporal) {
  return temporal ? q.kind == kTarget : q.kind >= kText;
}

// Whether a query sees the frame key in slot k_slot at cell k, in the rule's channel.
COGVIDEO_HD bool sees_frame_key(const QueryPos& q, int k_slot, const Cell& k, const AttentionRule& r) {
  if (q.kind <= kText) return false;
  const bool same_slot = k_slot == q.slot;
  if (!r.temporal) return same_slot && (k.p <= q.cell.p || (r.bidirectional_given && q.kind == kGiven));
  if (!r.windowed) return k_slot < q.slot || (same_slot && k.p <= q.cell.p);
  if (q.kind == kGiven)
    return k_slot < r.num_given && k.cyclic_x == q.cell.cyclic_x && k.cyclic_y == q.cell.cyclic_y;
  if (same_slot && k.p == q.cell.p) return true;
  const bool earlier = k_slot < q.slot || (same_slot && k.p < q.cell.p);
  return earlier && k.clamped_x == q.cell.clamped_x && k.clamped_y == q.cell.clamped_y;
}

// Queries of one group share their key set (up to causality): the CPU kernel tiles queries by group.
COGVIDEO_HD int64_t query_group(const QueryPos& q, const AttentionRule& r) {
  if (q.kind <= kText) return q.kind;
  const int64_t base = 1 + 1000000LL * q.kind;
  if (!r.temporal) return base + q.slot;  // own frame
  if (!r.windowed) return base;           // everything before the query
  if (q.kind == kGiven) return base + 1000 * q.cell.cyclic_x + q.cell.cyclic_y;
  return base + 100000LL * q.slot + 1000 * q.cell.clamped_x + q.cell.clamped_y;
}

}  // namespace cogvideo
