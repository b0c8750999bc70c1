"""Model-state bytes against the ZeRO paper's formulas and DeepSpeed's own estimators, each for
the assumptions it makes (exact), and what arrowtrain's precision modes hold."""

import pytest

from pretrain.train.plan.states import StateBytes, grad_partition_elements, model_state_bytes

PSI = 1024 * 1_205_633  # divisible by every rank count below
K = 12


@pytest.mark.parametrize("ranks", [1, 2, 8, 64, 1024])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_paper_formulas(stage, ranks):
    """Rajbhandari et al. 2020, §5 (Figure 1): mixed-precision Adam, K = 12."""
    expected = {0: (2 + 2 + K) * PSI, 1: 4 * PSI + K * PSI // ranks,
                2: 2 * PSI + (2 + K) * PSI // ranks, 3: (2 + 2 + K) * PSI // ranks}[stage]
    assert sum(model_state_bytes(PSI, ranks, stage, StateBytes.paper()).values()) == expected


@pytest.mark.parametrize("ranks", [1, 2, 8, 64])
def test_deepspeed_estimators(ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, gpu = estimate_zero2_model_states_mem_needs(PSI, num_gpus_per_node=ranks,
                                                   cpu_offload=False)
    assert sum(model_state_bytes(PSI, ranks, 2, StateBytes.deepspeed_estimator(2)).values()) \
        == gpu
    _, gpu = estimate_zero2_model_states_mem_needs(PSI, num_gpus_per_node=ranks)  # offload
    assert sum(model_state_bytes(PSI, ranks, 2, StateBytes.deepspeed_estimator(2),
                                 offload=True).values()) == gpu
    largest = 50_304 * 2048  # a token embedding: the largest module
    for offload in (False, True):
        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            PSI, largest, num_gpus_per_node=ranks, cpu_offload=offload, cpu_offload_params=False)
        ours = model_state_bytes(PSI, ranks, 3, StateBytes.deepspeed_estimator(3),
                                 gathered=largest, offload=offload)
        assert sum(ours.values()) == gpu


def test_bf16_is_deepspeeds_zero2_assumption():
    """arrowtrain's bf16 mode at ZeRO-1/2 holds what DeepSpeed's ZeRO-2 estimator assumes
    (16-bit weights and gradients, fp32 master, moments and gradient copy); its ZeRO-3 estimate
    differs by the fp32 gradient copy the step makes (stage3.py _prepare_fp32_grad_for_sub_group)
    and by accumulating in the weights' dtype unless data_types.grad_accum_dtype is fp32."""
    assert StateBytes.of("bf16", 2) == StateBytes.deepspeed_estimator(2)
    assert StateBytes.of("bf16", 1) == StateBytes.deepspeed_estimator(2)
    z3 = StateBytes.of("bf16", 3, grad_accum_fp32=True)
    assert z3.grad_copy == 4 and StateBytes.deepspeed_estimator(3).grad_copy == 0
    assert (z3.weights, z3.grads, z3.master, z3.moments) == (2, 4, 4, 8)


def test_fp32_modes_keep_a_master_copy_from_zero1_only():
    assert StateBytes.of("fp32", 0) == StateBytes(4, 4, 0, 8, 0)
    assert StateBytes.of("bf16_autocast", 0) == StateBytes(4, 4, 0, 8, 0)
    assert StateBytes.of("fp32", 2) == StateBytes(4, 4, 4, 8, 4)  # DeepSpeed clones it anyway
    assert StateBytes.of("bf16", 0) == StateBytes(2, 2, 4, 8, 4)  # the unfused wrapper


def test_gradient_partition_counts_boundary_parameters_whole():
    shapes = {"a": (10, 10), "b": (100,), "c": (30, 10), "d": (6,)}  # matrices 400, vectors 106
    # 2 ranks: matrices split at 200 (a: 0-100, c: 100-400 overlaps both), vectors at 53
    assert grad_partition_elements(shapes, 2) == max(100 + 300 + 100, 300 + 100 + 6)
    assert grad_partition_elements(shapes, 1) == 506
