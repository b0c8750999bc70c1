"""val_bleu: sacreBLEU of the model's translations of the val pairs, during training (seq2seq).

Every rank translates its share of the first `eval.bleu_samples` val pairs (the evaluation
batches: sorted by length, every W-th micro-batch), greedily or with beam `eval.bleu_beam`, up to
`data.target_length` tokens; rank 0 gathers the token ids, detokenizes hypotheses and references
with the run's tokenizer and scores them with sacrebleu.corpus_bleu (its default 13a
tokenization). Under ZeRO-3 the parameters are gathered collectively in every forward, so the
ranks agree on each decoding step (one all-reduce per step) and run the same number of them."""

from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.data import DataSource, eval_batches


def _agree(device: torch.device):
    """all_done(local): True once every rank is done (one all-reduce)."""
    def all_done(local: bool) -> bool:
        left = torch.tensor([0.0 if local else 1.0], device=device)
        dist.all_reduce(left)
        return float(left.item()) == 0.0
    return all_done


def _references(targets: torch.Tensor) -> list[list[int]]:
    """(B, T) targets (EOS, then -100) -> the target ids without EOS."""
    return [[t for t in row if t != -100][:-1] for row in targets.tolist()]


@torch.no_grad()
def val_bleu(model, src: DataSource, micro_batch: int, rank: int, world: int,
             device: torch.device, samples: int, beam: int, max_len: int,
             zero3: bool) -> float | None:
    """BLEU (0-100) on rank 0, None on the others. `model` is the engine's module in eval
    mode."""
    from pretrain.model.generate import beam_search, greedy

    all_done = _agree(device) if zero3 and world > 1 else None
    pairs = []
    for batch in eval_batches(src, micro_batch, rank, world, max_samples=samples):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if beam == 1:
            hyps = greedy(model, ids, mask, max_len, src.pad_id, src.eos_id, all_done)
        else:
            hyps = beam_search(model, ids, mask, beam, 0.6, max_len, src.pad_id, src.eos_id,
                               all_done)
        pairs += zip(hyps, _references(batch["targets"]))
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(pairs, gathered, dst=0)
    if rank != 0:
        return None
    import sacrebleu
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src.tokenizer_path))
    hyps, refs = zip(*(p for part in gathered for p in part))
    decode = [tok.decode_batch(list(x), skip_special_tokens=True) for x in (hyps, refs)]
    return sacrebleu.corpus_bleu(decode[0], [decode[1]]).score
