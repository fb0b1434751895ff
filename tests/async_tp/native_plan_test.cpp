// Host logic of the native async-TP GEMM (src/async_tp/native_plan.h): the tile schedule covers every output tile
// exactly once, visits the chunks from the pivot onward, rasters along N inside a band; a tile's chunk range covers
// exactly the rows it computes; argument and support checks name the offending field.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "async_tp/native_plan.h"
#include "tpcomm/error.h"

namespace tpcomm::detail {
namespace {

struct Visit {
  int32_t work, cta;
  NativeTile t;
};

// Every (work unit, CTA of the cluster) in work order.
std::vector<Visit> all_visits(const NativeSchedule& s) {
  std::vector<Visit> v;
  for (int32_t w = 0; w < s.num_work; ++w)
    for (int32_t r = 0; r < s.cluster_m; ++r) v.push_back({w, r, native_tile_of(s, w, r)});
  return v;
}

struct Case {
  int64_t M, N;
  int chunks;
};

const Case kCases[] = {{4096, 3584, 2}, {8192, 14336, 8}, {576, 520, 8}, {768, 1000, 4}, {1920, 776, 4},
                       {128, 256, 1},   {384, 300, 3},     {1024, 8, 8},  {4480, 1024, 5}, {1000, 1000, 8}};

TEST(NativePlan, EveryTileExactlyOnce) {
  for (const Case& c : kCases)
    for (int pivot = 0; pivot < c.chunks; ++pivot)
      for (int band : {0, 1, 2, 3, 8, 100}) {
        SCOPED_TRACE(std::to_string(c.M) + "x" + std::to_string(c.N) + " chunks " + std::to_string(c.chunks) +
                     " pivot " + std::to_string(pivot) + " band " + std::to_string(band));
        const NativeSchedule s = make_native_schedule(c.M, c.N, c.chunks, pivot, kNativeTileBf16Coop, band);
        EXPECT_EQ(s.tiles_m, (c.M + 127) / 128);
        EXPECT_EQ(s.tiles_n, (c.N + 255) / 256);
        EXPECT_GE(s.band, 1);
        EXPECT_LE(s.band, s.groups);
        std::set<std::pair<int32_t, int32_t>> seen;
        int64_t phantoms = 0;
        for (const Visit& v : all_visits(s)) {
          ASSERT_GE(v.t.n, 0);
          ASSERT_LT(v.t.n, s.tiles_n);
          ASSERT_GE(v.t.m, 0);
          if (v.t.m >= s.tiles_m) {
            ++phantoms;
            continue;
          }
          EXPECT_TRUE(seen.insert({v.t.m, v.t.n}).second) << "tile " << v.t.m << "," << v.t.n << " twice";
        }
        EXPECT_EQ(static_cast<int64_t>(seen.size()), int64_t(s.tiles_m) * s.tiles_n);
        EXPECT_EQ(phantoms, int64_t(s.groups * s.cluster_m - s.tiles_m) * s.tiles_n);
      }
}

// The two CTAs of a cluster share the n tile (B is multicast between them) and take consecutive positions of the
// visiting order; phantom tiles come only last.
TEST(NativePlan, ClusterSharesTheNTile) {
  for (const Case& c : kCases) {
    const NativeSchedule s = make_native_schedule(c.M, c.N, c.chunks, c.chunks - 1, kNativeTileBf16Coop, 0);
    for (int32_t w = 0; w < s.num_work; ++w) {
      const NativeTile t0 = native_tile_of(s, w, 0), t1 = native_tile_of(s, w, 1);
      EXPECT_EQ(t0.n, t1.n);
      ASSERT_LT(t0.m, s.tiles_m) << "the first CTA of a cluster never gets a phantom tile";
      if (t1.m < s.tiles_m) EXPECT_EQ(t1.m, (t0.m + 1) % s.tiles_m);
    }
  }
}

// Position j of the visiting order is m tile (first_tile + j) % tiles_m; the first tile starts in the pivot chunk
// (when a chunk holds at least one tile), and the chunks come in the order pivot, pivot + 1, ... (wrapping): the
// first chunk a tile touches, counted from the pivot, never decreases along the order.
TEST(NativePlan, PivotOrder) {
  for (const Case& c : kCases)
    for (int pivot = 0; pivot < c.chunks; ++pivot) {
      SCOPED_TRACE(std::to_string(c.M) + " chunks " + std::to_string(c.chunks) + " pivot " + std::to_string(pivot));
      const NativeSchedule s = make_native_schedule(c.M, c.N, c.chunks, pivot, kNativeTileBf16Coop, 0);
      const int64_t chunk_rows = c.M / c.chunks;
      if (chunk_rows >= 128 && (pivot * chunk_rows) % 128 == 0) {
        int32_t f, l;
        native_tile_chunks(s, s.first_tile, &f, &l);
        EXPECT_EQ(f, pivot);
      }
      if (chunk_rows >= 256) {  // then the pivot chunk holds a whole tile: the first one
        int32_t f, l;
        native_tile_chunks(s, s.first_tile, &f, &l);
        EXPECT_EQ(f, pivot);
        EXPECT_EQ(l, pivot);
      }
      int prev = -1;
      for (int32_t j = 0; j < s.tiles_m; ++j) {
        const int32_t m = (s.first_tile + j) % s.tiles_m;
        int32_t f, l;
        native_tile_chunks(s, m, &f, &l);
        const int rel = (f - pivot + c.chunks) % c.chunks;
        EXPECT_GE(rel, prev) << "position " << j << " (m tile " << m << ")";
        prev = rel;
      }
      // The work order follows the visiting order band by band: the band of work unit w's position never decreases.
      int32_t last_band = 0;
      for (int32_t w = 0; w < s.num_work; ++w) {
        const NativeTile t = native_tile_of(s, w, 0);
        const int32_t pos = (t.m - s.first_tile + s.tiles_m) % s.tiles_m;
        const int32_t band = pos / s.cluster_m / s.band;
        EXPECT_GE(band, last_band);
        last_band = band;
      }
    }
}

// Inside a band the tiles go along N: the first `size` work units of a band are n tile 0 of each of its groups, the
// next n tile 1, ...
TEST(NativePlan, RasterAlongNInsideABand) {
  const NativeSchedule s = make_native_schedule(4096, 3584, 2, 1, kNativeTileBf16Coop, 4);
  ASSERT_EQ(s.tiles_m, 32);
  ASSERT_EQ(s.tiles_n, 14);
  ASSERT_EQ(s.groups, 16);
  ASSERT_EQ(s.band, 4);
  ASSERT_EQ(s.first_tile, 16);  // chunk 1 starts at row 2048
  for (int32_t w = 0; w < 8; ++w) {
    const NativeTile t = native_tile_of(s, w, 0);
    EXPECT_EQ(t.n, w / 4);
    EXPECT_EQ(t.m, 16 + 2 * (w % 4));
  }
  // The second band starts after 4 groups x 14 n tiles.
  EXPECT_EQ(native_tile_of(s, 56, 0).m, 24);
  EXPECT_EQ(native_tile_of(s, 56, 0).n, 0);
  // The visiting order wraps: groups 8..15 of the order are m tiles 0..15 (chunk 0).
  EXPECT_EQ(native_tile_of(s, 8 * 14, 0).m, 0);
  // A partial last band (groups 16 = 4 bands of 4 here; with band 5: 3 full bands and one of 1 group).
  const NativeSchedule s5 = make_native_schedule(4096, 3584, 2, 0, kNativeTileBf16Coop, 5);
  for (int32_t n = 0; n < 14; ++n) {
    const NativeTile t = native_tile_of(s5, 15 * 14 + n, 0);
    EXPECT_EQ(t.m, 30);
    EXPECT_EQ(t.n, n);
  }
}

TEST(NativePlan, TileChunkRanges) {
  // 72 rows per chunk, 128-row tiles: tile 0 = rows 0..127 = chunks 0 (0..71) and 1 (72..143).
  NativeSchedule s = make_native_schedule(576, 520, 8, 0, kNativeTileBf16Coop, 0);
  int32_t f, l;
  native_tile_chunks(s, 0, &f, &l);
  EXPECT_EQ(f, 0);
  EXPECT_EQ(l, 1);
  native_tile_chunks(s, 1, &f, &l);  // rows 128..255: chunks 1..3
  EXPECT_EQ(f, 1);
  EXPECT_EQ(l, 3);
  native_tile_chunks(s, 4, &f, &l);  // rows 512..575 (partial tile): chunk 7
  EXPECT_EQ(f, 7);
  EXPECT_EQ(l, 7);
  // Exhaustively: a tile's range is exactly the set of chunks of its rows.
  for (const Case& c : kCases) {
    s = make_native_schedule(c.M, c.N, c.chunks, 0, kNativeTileFp8, 0);
    const int64_t rows = c.M / c.chunks;
    for (int32_t m = 0; m < s.tiles_m; ++m) {
      native_tile_chunks(s, m, &f, &l);
      std::set<int64_t> want;
      for (int64_t r = int64_t(m) * 128; r < std::min<int64_t>(c.M, (m + 1) * int64_t(128)); ++r) want.insert(r / rows);
      EXPECT_EQ(f, *want.begin());
      EXPECT_EQ(l, *want.rbegin());
      EXPECT_EQ(static_cast<size_t>(l - f + 1), want.size());
    }
  }
}

// The bf16 default (128x128 ping-pong) and tile_config 1 (128x256); the 128x128 schedule covers every tile once.
TEST(NativePlan, TileConfigs) {
  NativeAgGemmParams p;
  EXPECT_EQ(native_tile_shape(p).n, 128);
  p.tile_config = 1;
  EXPECT_EQ(native_tile_shape(p).n, 256);
  p.tile_config = 0;
  p.ab_dtype = DType::kFloat8E4M3;
  EXPECT_EQ(native_tile_shape(p).k, 128);
  p.ab_dtype = DType::kBFloat16;
  const NativeTileShape t = native_tile_shape(p);
  EXPECT_EQ(t.m, 128);
  EXPECT_EQ(t.n, 128);
  const NativeSchedule s = make_native_schedule(1920, 776, 4, 3, t, 0);
  EXPECT_EQ(s.tiles_m, 15);
  EXPECT_EQ(s.tiles_n, 7);
  EXPECT_EQ(s.first_tile, 12);  // chunk 3 starts at row 1440: 11.25 tiles -> the tile at row 1536
  std::set<std::pair<int32_t, int32_t>> seen;
  for (const Visit& v : all_visits(s))
    if (v.t.m < s.tiles_m) EXPECT_TRUE(seen.insert({v.t.m, v.t.n}).second);
  EXPECT_EQ(static_cast<int64_t>(seen.size()), int64_t(s.tiles_m) * s.tiles_n);
}

TEST(NativePlan, FirstTileSkipsAStraddlingTile) {
  // 192 rows per chunk: chunk 1 is rows 192..383; tile 1 (128..255) straddles chunks 0 and 1, tile 2 (256..383) is
  // inside chunk 1 and comes first; the straddler comes last.
  const NativeSchedule s = make_native_schedule(768, 1000, 4, 1, kNativeTileBf16Coop, 0);
  EXPECT_EQ(s.first_tile, 2);
  EXPECT_EQ((s.first_tile + s.tiles_m - 1) % s.tiles_m, 1);
}

NativeAgGemmParams valid_params() {
  alignas(16) static char buf[256];
  static uint32_t sig[8];
  static device::ErrorRecord rec;
  static uint32_t abort_flag;
  NativeAgGemmParams p;
  p.a = p.b = p.d = buf;
  p.M = 1024;
  p.N = 768;
  p.K = 512;
  p.chunk_signals = sig;
  p.num_chunks = 4;
  p.pivot_chunk = 1;
  p.sync = device::SyncContext{&rec, &abort_flag, 1000000};
  return p;
}

std::string field_of(const std::string& why) { return why.substr(0, why.find(':')); }

TEST(NativePlan, InvalidArgumentsNameTheField) {
  EXPECT_EQ(native_invalid_argument(valid_params()), "");
  EXPECT_EQ(native_unsupported_host(valid_params()), "");
  struct Bad {
    const char* field;
    void (*mutate)(NativeAgGemmParams&);
  };
  const Bad bad[] = {
      {"a", [](NativeAgGemmParams& p) { p.a = nullptr; }},
      {"b", [](NativeAgGemmParams& p) { p.b = nullptr; }},
      {"d", [](NativeAgGemmParams& p) { p.d = nullptr; }},
      {"M", [](NativeAgGemmParams& p) { p.M = 0; }},
      {"N", [](NativeAgGemmParams& p) { p.N = -1; }},
      {"K", [](NativeAgGemmParams& p) { p.K = int64_t(1) << 31; }},
      {"lda", [](NativeAgGemmParams& p) { p.lda = 100; }},
      {"ldb", [](NativeAgGemmParams& p) { p.ldb = 511; }},
      {"ldd", [](NativeAgGemmParams& p) { p.ldd = 700; }},
      {"num_chunks", [](NativeAgGemmParams& p) { p.num_chunks = 0; }},
      {"M", [](NativeAgGemmParams& p) { p.num_chunks = 3; p.pivot_chunk = 0; }},
      {"pivot_chunk", [](NativeAgGemmParams& p) { p.pivot_chunk = 4; }},
      {"pivot_chunk", [](NativeAgGemmParams& p) { p.pivot_chunk = -1; }},
      {"chunks_per_rank", [](NativeAgGemmParams& p) { p.chunks_per_rank = 3; }},
      {"chunk_signals", [](NativeAgGemmParams& p) { p.chunk_signals = nullptr; }},
      {"sync.error", [](NativeAgGemmParams& p) { p.sync.error = nullptr; }},
      {"sync.abort", [](NativeAgGemmParams& p) { p.sync.abort = nullptr; }},
      {"sync.timeout_ns", [](NativeAgGemmParams& p) { p.sync.timeout_ns = 0; }},
      {"a_scale", [](NativeAgGemmParams& p) { p.ab_dtype = DType::kFloat8E4M3; p.scale = NativeScale::kRowwise; }},
      {"max_ctas", [](NativeAgGemmParams& p) { p.max_ctas = -2; }},
      {"raster_band", [](NativeAgGemmParams& p) { p.raster_band = -1; }},
      {"tile_config", [](NativeAgGemmParams& p) { p.tile_config = 2; }},
  };
  for (const Bad& b : bad) {
    NativeAgGemmParams p = valid_params();
    b.mutate(p);
    const std::string why = native_invalid_argument(p);
    EXPECT_EQ(field_of(why), b.field) << why;
    // The launch refuses it before touching the device.
    try {
      launch_native_ag_gemm(p, nullptr);
      ADD_FAILURE() << "launch accepted: " << why;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    }
  }
}

TEST(NativePlan, UnsupportedNamesTheReason) {
  struct Bad {
    const char* field;
    void (*mutate)(NativeAgGemmParams&);
  };
  static float scale[4];
  const Bad bad[] = {
      {"ab_dtype", [](NativeAgGemmParams& p) { p.ab_dtype = DType::kFloat16; }},
      {"ab_dtype", [](NativeAgGemmParams& p) { p.ab_dtype = DType::kFloat8E5M2; }},
      {"d_dtype", [](NativeAgGemmParams& p) { p.d_dtype = DType::kFloat32; }},
      {"scale", [](NativeAgGemmParams& p) { p.scale = NativeScale::kTensorwise; p.a_scale = p.b_scale = scale; }},
      {"a", [](NativeAgGemmParams& p) { p.a = static_cast<const char*>(p.a) + 8; }},
      {"b", [](NativeAgGemmParams& p) { p.b = static_cast<const char*>(p.b) + 2; }},
      {"d", [](NativeAgGemmParams& p) { p.d = static_cast<char*>(p.d) + 4; }},
      {"lda", [](NativeAgGemmParams& p) { p.K = 500; }},                      // bf16 rows of 1000 bytes
      {"lda", [](NativeAgGemmParams& p) { p.lda = 516; }},
      {"ldb", [](NativeAgGemmParams& p) { p.ldb = 515; }},
      {"ldd", [](NativeAgGemmParams& p) { p.N = 770; }},
      {"max_ctas", [](NativeAgGemmParams& p) { p.max_ctas = 1; }},
      {"tile_config", [](NativeAgGemmParams& p) { p.ab_dtype = DType::kFloat8E4M3; p.tile_config = 1; }},
  };
  for (const Bad& b : bad) {
    NativeAgGemmParams p = valid_params();
    b.mutate(p);
    ASSERT_EQ(native_invalid_argument(p), "");
    const std::string why = native_unsupported_host(p);
    EXPECT_EQ(field_of(why), b.field) << why;
  }
  // FP8 rows need 16 elements; with scales given, FP8 is fine; FP8 without scales means unit scales.
  NativeAgGemmParams p = valid_params();
  p.ab_dtype = DType::kFloat8E4M3;
  p.scale = NativeScale::kRowwise;
  p.a_scale = p.b_scale = scale;
  EXPECT_EQ(native_unsupported_host(p), "");
  p.scale = NativeScale::kNone;
  EXPECT_EQ(native_unsupported_host(p), "");
  p.K = 520;  // 520 bytes per FP8 row
  EXPECT_EQ(field_of(native_unsupported_host(p)), "lda");
}

}  // namespace
}  // namespace tpcomm::detail
