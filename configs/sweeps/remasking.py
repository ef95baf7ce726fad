"""Remasking strategies of the reverse process on one trained model (docs/sampling.md#remasking):
random vs low-confidence remasking (pure diffusion, one token per step), semi-autoregressive blocks, and Fast-dLLM
threshold decoding. Every point differs only in sampling.*, so the sweep trains once and evaluates four times.

    llada sweep --sweep=configs/sweeps/remasking.py --workdir=runs/remasking
"""

GEN = 10  # configs/tiny_task.py's sampling.gen_length (its training length)


def point(remasking, block_length, threshold):
    return {"sampling.remasking": remasking, "sampling.block_length": block_length, "sampling.threshold": threshold}


def get_sweep():
    return "configs/tiny_task.py", [
        point("random", GEN, 0.0),  # uniform-random choice of the positions to commit
        point("low_confidence", GEN, 0.0),  # the most confident positions first (the paper's default)
        point("low_confidence", 2, 0.0),  # semi-autoregressive: 5 blocks of 2, left to right
        point("low_confidence", GEN, 0.9),  # threshold decoding: commit every position with confidence >= 0.9
    ]
