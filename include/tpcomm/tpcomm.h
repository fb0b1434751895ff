// Umbrella header.
#pragma once

#include "tpcomm/all_reduce.h"
#include "tpcomm/communicator.h"
#include "tpcomm/error.h"
#include "tpcomm/launch.h"
#include "tpcomm/log.h"
#include "tpcomm/symmetric_memory.h"
#include "tpcomm/types.h"
