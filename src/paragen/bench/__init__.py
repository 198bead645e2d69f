"""Benchmarks: every strategy measured the same way, in one run (``paragen bench``).

Modules: ``run`` (the protocol), ``metrics`` (pure metric functions), ``peers``
(transformers ``generate()`` on the same weights), ``report`` (table, HTML, JSON text),
``cli`` (the command).

``bench.json`` (schema ``"paragen.bench/1"``), one object:

- ``schema``: ``"paragen.bench/1"``.
- ``config``: the run's settings: ``strategies`` (as given), ``task``, ``limit``,
  ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``model``, ``draft``, ``backend``,
  ``options`` (list of ``[strategy, key, value]``), ``models`` (list of ``[strategy,
  model]``: strategies run on their own target), ``resamples`` (bootstrap), ``threads``
  (torch CPU threads the run used; also ``environment.torch_threads``), ``heads`` (list of
  ``[strategy, heads directory]``).
- ``environment``: ``paragen``, ``python``, ``torch``, ``transformers``, ``numpy``
  versions; ``platform``, ``cpu``, ``cpu_count``, ``torch_threads``, ``cuda``;
  ``git_commit`` (``-dirty`` suffix with local changes; null outside git); ``command``
  (argv list); ``started`` (UTC ISO time).
- ``contenders``: name -> ``{peer, lossless, needs_draft, model, options}`` (options with
  every default filled in; ``model``: the target it ran on). ``ar`` is always present and first.
  A name ``NAME@LABEL`` is a variant of strategy NAME with its own options.
- ``tasks``: list of ``{id, prompt, prompt_tokens, truncated}``; ``prompt`` is the text
  actually given (its last tokens when ``truncated`` to fit the context).
- ``records``: one per (contender, prompt): ``task_id``, ``strategy``, ``prompt_tokens``,
  ``new_tokens``, ``target_calls`` (int or null), ``draft_calls`` (int or null),
  ``seconds``, ``tokens`` (new token ids), ``text``, ``finish_reason``
  (``length``/``eos``/``stop``), ``committed_per_call`` (``{"k": calls}`` or null for
  peers), ``extra`` (the strategy's own statistics, ``Stats.extra``, or null for peers),
  ``exact`` (bool: tokens identical to ``ar``'s), ``agree`` (share of positions
  equal to ``ar``'s, over the longer output), ``gen_ppl`` (float or null for an empty
  output), ``ast_ok`` (bool).
- ``summary``: name -> ``{strategy, lossless, peer, prompts, new_tokens, target_calls,
  draft_calls, seconds, tokens_per_call, tok_s, speedup, speedup_ci95: [lo, hi], exact,
  non_exact: [task ids], agree, gen_ppl, ast_ok, loops, committed_per_call, flagged,
  drafted_per_call, acceptance: [per draft position] (both null but for draft-and-verify), repeats}``;
  definitions in ``paragen.bench.metrics.summarize_strategy``. ``flagged`` marks a
  lossless strategy that differed from ``ar`` under greedy decoding.
- ``seconds``: the whole run's wall time (loading, warm-up, timed runs, scoring).

Beside it, ``bench.md`` (the table, caveats and metric definitions) and ``report.html``
(the same, plus plots and every prompt's outputs, collapsed).
"""
