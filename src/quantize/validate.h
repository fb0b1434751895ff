// Host-side argument validation of the quantization API (src/quantize/validate.cpp). Each function throws
// tpcomm::Error(kInvalidArgument) whose message starts with the argument or dimension name; it touches no
// CUDA state, so it runs (and is tested) on machines without a GPU. The launchers call it before enqueuing.
#pragma once

#include "tpcomm/quantize.h"

namespace tpcomm::quant::detail {

void validate(const Fp8QuantizeParams& p);
void validate(const Fp8DequantizeParams& p);
void validate(const Mxfp8QuantizeParams& p);
void validate(const Mxfp8DequantizeParams& p);
void validate(const Nvfp4QuantizeParams& p);
void validate(const Nvfp4DequantizeParams& p);
void validate_amax(const void* input, DType input_dtype, int64_t count, const float* amax_out);

// Multiprocessor count of the current device (cached per device).
int sm_count();

}  // namespace tpcomm::quant::detail
