#include <gtest/gtest.h>

#include "tpcomm/error.h"
#include "tpcomm/types.h"

using namespace tpcomm;

TEST(Types, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::kFloat32), 4u);
  EXPECT_EQ(dtype_size(DType::kBFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::kFloat8E4M3), 1u);
  EXPECT_STREQ(dtype_name(DType::kBFloat16), "bf16");
  EXPECT_EQ(parse_dtype("bfloat16"), DType::kBFloat16);
  EXPECT_EQ(parse_reduce_op("max"), ReduceOp::kMax);
}

TEST(Types, BadValuesNameTheArgument) {
  try {
    parse_dtype("int4", "--dtype");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--dtype"), std::string::npos);
  }
  EXPECT_THROW(dtype_size(static_cast<DType>(99)), Error);
  EXPECT_THROW(parse_reduce_op("prod"), Error);
}
