// tpcomm-bench --check compares against the same CPU reference the tests use (tests/quantize/quant_ref.cpp).
// The bench does not link the test-support library, so it compiles its own copy of the reference here.
#include "../../tests/quantize/quant_ref.cpp"
