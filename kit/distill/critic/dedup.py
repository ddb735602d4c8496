"""`dedup`: MinHash LSH (datasketch) over the input's word 3-grams; near-duplicates of kept samples
(or of the seeds) are cut."""

from __future__ import annotations

from kit.distill.critic.base import Candidate, CriticContext, Verifier, words


def shingles(text: str, n: int = 3) -> set[str]:
    tokens = words(text)
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else {""}
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class DedupCheck(Verifier):
    type = "dedup"
    stateful = True
    input_only = True

    def __init__(self, config, context: CriticContext):
        super().__init__(config, context)
        from datasketch import MinHashLSH

        self.index = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        for i, text in enumerate(context.seed_inputs):
            self._insert(f"seed-{i}", text)

    def _minhash(self, text: str):
        from datasketch import MinHash

        minhash = MinHash(num_perm=self.config.num_perm, seed=1)
        minhash.update_batch([s.encode() for s in shingles(text)])
        return minhash

    def _insert(self, key: str, text: str) -> None:
        if key not in self.index.keys:
            self.index.insert(key, self._minhash(text))

    async def check(self, candidate: Candidate) -> str | None:
        return self.check_now(candidate)

    def check_now(self, candidate: Candidate) -> str | None:
        hits = self.index.query(self._minhash(candidate.input_text))
        return f"near-duplicate of {sorted(hits)[0]}" if hits else None

    def admit(self, sample_id: str, candidate: Candidate) -> None:
        self._insert(sample_id, candidate.input_text)
