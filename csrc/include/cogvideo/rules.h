// The attention rules of kernels/rules.py as integer arithmetic, for host and device code.
// Keep in step with rules.py: tests compare every kernel against the dense masks built from it.
#pragma once

#include <cstdint>

#include "cogvideo/window_attention.h"

namespace cogvideo {

enum QueryKind : int { kPadding = -1, kText = 0, kGiven = 1, kTarget = 2 };

// A query's stream index decoded: kind, slot, block position p and its window coordinates (x, y).
struct QueryPos {
  int kind;
  int slot;
  int p;
  int x;
  int y;
};

COGVIDEO_HD int positive_mod(int a, int m) { return ((a % m) + m) % m; }

COGVIDEO_HD QueryPos decode_query(int64_t stream_index, int text_len, int num_given, int grid) {
  QueryPos q{kPadding, 0, 0, 0, 0};
  if (stream_index < 0) return q;
  if (stream_index < text_len) {
    q.kind = kText;
    return q;
  }
  const int frame_len = grid * grid;
  const int64_t rel = stream_index - text_len;
  q.slot = static_cast<int>(rel / frame_len);
  q.p = static_cast<int>(rel % frame_len);
  q.x = q.p / grid;
  q.y = q.p % grid;
  q.kind = q.slot < num_given ? kGiven : kTarget;
  return q;
}

// Whether the query sees the (valid) text keys, and whether the text bias applies to its row.
COGVIDEO_HD bool sees_text(const QueryPos& q, bool temporal) { return temporal ? q.kind > kText : q.kind >= kText; }
COGVIDEO_HD bool text_biased(const QueryPos& q, bool temporal) {
  return temporal ? q.kind == kTarget : q.kind >= kText;
}

// Group of a cyclic (prefill, given rows) and a clamped (AR, target rows) window along one axis.
COGVIDEO_HD int cyclic_group(int a, int grid, int window, int shift) {
  return positive_mod(a - shift, grid) / window;
}
COGVIDEO_HD int clamped_group(int a, int window, int shift) { return (a + shift) / window; }

// Whether a frame query sees the frame key at (k_slot, k_p) in the rule's channel.
COGVIDEO_HD bool sees_frame_key(const QueryPos& q, int k_slot, int k_p, bool temporal, bool windowed,
                                bool bidirectional_given, int num_given, int grid, int window, int shift) {
  if (q.kind <= kText) return false;
  const bool same_slot = k_slot == q.slot;
  if (!temporal) return same_slot && (k_p <= q.p || (bidirectional_given && q.kind == kGiven));
  if (!windowed) return k_slot < q.slot || (same_slot && k_p <= q.p);
  const int kx = k_p / grid, ky = k_p % grid;
  if (q.kind == kGiven) {
    return k_slot < num_given && cyclic_group(q.x, grid, window, shift) == cyclic_group(kx, grid, window, shift) &&
           cyclic_group(q.y, grid, window, shift) == cyclic_group(ky, grid, window, shift);
  }
  if (same_slot && k_p == q.p) return true;
  const bool earlier = k_slot < q.slot || (same_slot && k_p < q.p);
  return earlier && clamped_group(q.x, window, shift) == clamped_group(kx, window, shift) &&
         clamped_group(q.y, window, shift) == clamped_group(ky, window, shift);
}

COGVIDEO_HD bool sees_frame_key(const QueryPos& q, int k_slot, int k_p, const AttentionRule& r) {
  return sees_frame_key(q, k_slot, k_p, r.temporal, r.windowed, r.bidirectional_given, r.num_given, r.grid,
                        r.window, r.shift);
}

// Queries of one group share their key set (up to causality): the CPU kernel tiles queries by group.
COGVIDEO_HD int64_t query_group(const QueryPos& q, const AttentionRule& r) {
  if (q.kind <= kText) return q.kind;
  const int64_t base = 1 + 1000000LL * q.kind;
  if (!r.temporal) return base + q.slot;  // own frame
  if (!r.windowed) return base;           // everything before the query
  if (q.kind == kGiven) {
    return base + 1000 * cyclic_group(q.x, r.grid, r.window, r.shift) + cyclic_group(q.y, r.grid, r.window, r.shift);
  }
  return base + 100000LL * q.slot + 1000 * clamped_group(q.x, r.window, r.shift) +
         clamped_group(q.y, r.window, r.shift);
}

}  // namespace cogvideo
