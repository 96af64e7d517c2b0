// Host stand-ins for the CUDA built-ins that kernels/*.cu use, so that the same
// sources compile with a C++ compiler and their kernels run on the CPU.
//
// A launch runs every thread of the grid one after another. Threads of an
// elementwise kernel never read what another thread writes, so that order
// gives the GPU's result. The one cross-thread operation, __shfl_xor_sync,
// is emulated per warp by replay: the 32 lanes run up to shuffle k, each
// records its value there and stops; the lanes are then re-run from the
// start, shuffles before k answered from the record, up to shuffle k + 1,
// until every lane finishes. A replayed kernel must rewrite, before reading
// it, anything it wrote earlier in the same launch (softmax_xent does).
//
// What a GPU leaves undefined is refused with an exception, which guarded()
// turns into the message a launcher returns: a full-warp shuffle that some
// lanes never reach because they have exited, a partial mask, an offset past
// the warp.
//
// The emulator's state is global: launch from one host thread at a time.
#pragma once

#include <math.h>

#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

struct gbp_dim3 {
    unsigned int x, y, z;
};

extern gbp_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

namespace gbp_emu {

constexpr int WARP = 32;

struct WarpReplay {
    int lane = 0;        // lane running now
    int next_call = 0;   // index of this lane's next shuffle in this run
    int known = 0;       // shuffles whose values every lane has recorded
    void* jump[5];       // __builtin_setjmp buffer of the running lane
    std::vector<double> values[WARP];  // values[lane][k]: what lane passed to shuffle k
};

extern WarpReplay warp;

// Runs the kernel body of one lane until it ends or reaches an unknown shuffle.
template <typename Body>
__attribute__((noinline)) bool run_lane(const Body& body) {
    warp.next_call = 0;
    if (__builtin_setjmp(warp.jump) == 0) {
        body();
        return true;
    }
    return false;
}

// Every block, then every warp of it, lanes replayed until all of them finish.
template <typename Body>
void launch(unsigned int grid, unsigned int block, const Body& body) {
    if (block % WARP != 0) throw std::invalid_argument("block size must be a multiple of 32");
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        for (unsigned int first = 0; first < block; first += WARP) {
            warp.known = 0;
            for (auto& v : warp.values) v.clear();
            for (;;) {
                int finished = 0;
                for (int lane = 0; lane < WARP; ++lane) {
                    warp.lane = lane;
                    threadIdx = {first + lane, 0, 0};
                    finished += run_lane(body) ? 1 : 0;
                }
                if (finished == WARP) break;
                if (finished > 0) {
                    throw std::logic_error(
                        "__shfl_xor_sync number " + std::to_string(warp.known + 1) +
                        " of warp " + std::to_string(first / WARP) + " in block " +
                        std::to_string(b) + " is reached by " + std::to_string(WARP - finished) +
                        " lanes while " + std::to_string(finished) +
                        " have exited: undefined on a GPU with the full mask");
                }
                ++warp.known;
            }
        }
    }
}

// Runs a launch; nullptr when it completed, else why it was refused (valid until the next).
template <typename Launch>
const char* guarded(const Launch& run) {
    static std::string error;
    try {
        run();
        return nullptr;
    } catch (const std::exception& exc) {
        error = exc.what();
        return error.c_str();
    }
}

}  // namespace gbp_emu

template <typename T>
T __shfl_xor_sync(unsigned int mask, T value, int offset) {
    using gbp_emu::warp;
    if (mask != 0xffffffffu) throw std::invalid_argument("only full-warp shuffles are emulated");
    if (offset < 0 || offset >= gbp_emu::WARP) {
        throw std::invalid_argument("__shfl_xor_sync offset " + std::to_string(offset) +
                                    " is outside the 32-lane warp");
    }
    const int k = warp.next_call++;
    if (k < warp.known) return static_cast<T>(warp.values[warp.lane ^ offset][k]);
    warp.values[warp.lane].push_back(static_cast<double>(value));
    __builtin_longjmp(warp.jump, 1);
}
