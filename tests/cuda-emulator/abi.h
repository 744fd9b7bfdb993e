// What the stand-in driver (driver.cpp) and kernels compiled by it (through device.h) share.
#pragma once

struct EmuDim {
    unsigned x, y, z;
};

// The emulated thread now running; the driver points `__emu_current` at it before each switch.
struct EmuThread {
    EmuDim thread_idx, block_idx, block_dim, grid_dim;
    unsigned linear;             // index within the block
    void* dynamic_shared;        // the block's `extern __shared__` memory
    unsigned long long* shuffle; // one exchange slot per thread of the block
};

// Barriers: the running fiber parks and the driver's scheduler runs the others.
struct EmuHooks {
    void (*sync_block)();
    void (*sync_warp)();
};
