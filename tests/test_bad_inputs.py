"""Every bad input: one line saying what is wrong and how to fix it, a non-zero exit, no
traceback, and no output file created or changed. `python tests/test_bad_inputs.py`
prints the table of docs/troubleshooting.md from the same cases (`--docs`: rewrites it there).

The page cannot drift: each case's test also asserts that the page's row is the line the
CLI just printed (``doc_row``), and ``test_troubleshooting_lists_every_case`` that the
table has one row per case, in order, without running any."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as conftest.py: the rows are what an offline run prints

import pytest  # noqa: E402
from helpers import make_inputs  # noqa: E402

from retrieval_head.cli import commands  # noqa: E402

# (what is wrong, command, arguments, a phrase the one-line message must hold)
CASES = [
    ("model folder missing", "detect", ["--model_path", "{root}/nope/model"], "does not exist"),
    ("model path is a file", "detect", ["--model_path", "{tiny}/config.json"], "is a file, not a model folder"),
    ("folder without config.json", "detect", ["--model_path", "{empty_hay}"], "no config.json"),
    ("weights file truncated", "detect", ["--model_path", "{truncated}"], "truncated or corrupt"),
    ("not a causal LM", "detect", ["--model_path", "{t5}"], "not a causal LM"),
    ("hub id, hub offline", "detect", ["--model_path", "nobody/no-such-model"], "offline"),
    ("attention not through the interface", "detect", ["--model_path", "{neo}"], "GPTNeoForCausalLM"),
    ("negative length", "detect", ["--s", "-5", "--e", "100"], "positive"),
    ("zero length", "detect", ["--context_lengths", "0"], "positive"),
    ("--s larger than --e", "detect", ["--s", "500", "--e", "100"], "swap"),
    ("length below the prompt overhead", "detect", ["--context_lengths", "10"], "overhead"),
    ("length beyond the model's positions", "detect", ["--context_lengths", "1000"], "positions"),
    ("depth outside 0..100", "detect", ["--depth_percents", "120"], "0..100"),
    ("haystack folder missing", "detect", ["--haystack_dir", "{root}/nohay"], "does not exist"),
    ("haystack folder empty", "detect", ["--haystack_dir", "{empty_hay}"], "no .txt files"),
    ("haystack not UTF-8", "detect", ["--haystack_dir", "{latin1_hay}"], "not UTF-8"),
    ("haystack folder of folders only", "detect", ["--haystack_dir", "{parts_only}"], "only folders (part1, part2)"),
    ("original layout: a needle without its part folder", "detect", ["--haystack_dir", "{orig_no_part1}"],
     "needle 0 has no part1 folder"),
    ("original layout: a part folder without text", "detect", ["--haystack_dir", "{orig_empty_part}"],
     "part1 has no .txt files"),
    ("haystack too short", "detect", ["--haystack_dir", "{short_hay}", "--context_lengths", "500"],
     "tokens, too short"),
    ("needles file missing", "detect", ["--needles", "{root}/none.jsonl"], "does not exist"),
    ("needles path is a folder", "detect", ["--needles", "{empty_hay}"], "is a folder, not a file"),
    ("needles not UTF-8", "detect", ["--needles", "{needles_latin1}"], "not UTF-8"),
    ("needles not JSON lines", "detect", ["--needles", "{needles_notjson}"], "is not JSON"),
    ("needle missing fields", "detect", ["--needles", "{needles_fields}"], "lacks question, real_needle"),
    ("needle field a number", "detect", ["--needles", "{needles_number}"], "needle is a number (5), not a string"),
    ("needle field a list", "detect", ["--needles", "{needles_list}"], "question is a list, not a string"),
    ("needle haystack not a name", "detect", ["--needles", "{needles_hay_number}"], "haystack is a number (3)"),
    ("real_needle not inside needle", "detect", ["--needles", "{needles_outside}"], "not inside needle"),
    ("output folder not writable", "detect", ["--output_dir", "{a_file}/sub"], "not a writable folder"),
    ("--resume with --overwrite", "detect", ["--resume", "--overwrite"], "contradict"),
    ("negative --batch_tokens", "detect", ["--batch_tokens", "-1"], "--batch_tokens"),
    ("--until_stable 0", "detect", ["--until_stable", "0"], "--until_stable must be at least 1"),
    ("--until_stable K larger than the heads", "detect", ["--until_stable", "9"], "exceeds the model's 8 heads"),
    ("--until_stable with shards", "detect", ["--until_stable", "5", "--rank", "0", "--world_size", "2"],
     "--until_stable runs in one process"),
    ("--repeat_period below 2", "detect", ["--method", "induction", "--repeat_period", "1"],
     "--repeat_period must be >= 2"),
    ("repeated tokens beyond the model's positions", "detect",
     ["--method", "echo", "--repeat_period", "300", "--repeat_count", "4"], "lower --repeat_period"),
    ("head_score file missing", "niah", ["--mask_top", "2", "--head_score", "{root}/none.json"], "does not exist"),
    ("head_score file malformed", "niah", ["--mask_top", "2", "--head_score", "{hs_bad}"], "not one line of JSON"),
    ("head_score path is a folder", "niah", ["--mask_top", "2", "--head_score", "{empty_hay}"],
     "is a folder, not a file"),
    ("head_score lists of different lengths", "niah", ["--mask_top", "2", "--head_score", "{hs_ragged}"],
     "not the same length (0-0 has 2 scores, 1-3 has 1)"),
    ("head_score holds NaN", "niah", ["--mask_top", "2", "--head_score", "{hs_nan}"], "1-2 holds NaN at trial 1"),
    ("head_score holds Infinity", "niah", ["--mask_top", "2", "--head_score", "{hs_inf}"],
     "0-3 holds Infinity at trial 0"),
    ("head_score holds a boolean", "niah", ["--mask_top", "2", "--head_score", "{hs_bool}"],
     "0-1 holds true (a boolean)"),
    ("head_score holds a string", "niah", ["--mask_top", "2", "--head_score", "{hs_str}"],
     '0-1 holds "0.5" (a string)'),
    ("head_score key written twice", "niah", ["--mask_top", "2", "--head_score", "{hs_dupkey}"],
     "names key '1-3' twice"),
    ("head_score head spelled twice", "niah", ["--mask_top", "2", "--head_score", "{hs_twice}"],
     "names head 0-1 twice ('0-1' and '00-1')"),
    ("head_score of another model's shape", "niah", ["--mask_top", "2", "--head_score", "{hs_other}"],
     "32 layers x 32 heads"),
    ("DuoAttention TSV value outside [0, 1]", "niah", ["--mask_top", "2", "--head_score", "{hs_duo_range}"],
     "line 2, column 2 holds 1.5, outside [0, 1]"),
    ("DuoAttention TSV rows of different lengths", "niah", ["--mask_top", "2", "--head_score", "{hs_duo_ragged}"],
     "line 2 has 1 value, line 1 has 2 (a ragged full_attention_heads.tsv)"),
    ("DuoAttention TSV not numbers", "niah", ["--mask_top", "2", "--head_score", "{hs_duo_text}"],
     "line 2, column 1 is 'zero', not a number"),
    ("DuoAttention config.json without sink_size", "niah", ["--mask_top", "2", "--head_score", "{hs_duo_nosink}"],
     "has no sink_size"),
    ("DuoAttention pattern of another model's shape", "niah",
     ["--mask_top", "2", "--head_score", "{hs_duo_other}"], "is for 3 layers x 2 KV heads, the model has 2 layers"),
    ("RazorAttention head id a string", "niah", ["--mask_top", "2", "--head_score", "{hs_razor_str}"],
     "layer '0' lists \"1\" (a string), not a KV head id"),
    ("RazorAttention layer beyond the model", "niah", ["--mask_top", "2", "--head_score", "{hs_razor_layer}"],
     "names layer 7, the model has 2 layers"),
    ("per-layer list: head beyond the model", "niah", ["--mask_top", "2", "--head_score", "{hs_layers_head}"],
     "names head 9, the model has 4 heads per layer"),
    ("per-layer list holds a boolean", "niah", ["--mask_top", "2", "--head_score", "{hs_layers_bool}"],
     "lists true (a boolean), not a head id"),
    ("QRHead entry not a pair", "niah", ["--mask_top", "2", "--head_score", "{hs_qr_pair}"],
     "entry 0 is a list of 3, not a [\"layer-head\", score] pair"),
    ("QRHead score a string", "niah", ["--mask_top", "2", "--head_score", "{hs_qr_score}"],
     "entry 1 (0-1) scores \"0.25\" (a string)"),
    ("head file an empty object", "niah", ["--mask_top", "2", "--head_score", "{hs_empty_obj}"],
     "holds no heads ({} is empty"),
    ("head file an empty list", "niah", ["--mask_top", "2", "--head_score", "{hs_empty_list}"],
     "holds no heads ([] is empty"),
    ("head file mixing two formats' keys", "niah", ["--mask_top", "2", "--head_score", "{hs_mixed}"],
     "mixes keys of two formats"),
    ("K larger than the heads", "niah", ["--mask_top", "9", "--head_score", "{hs_tiny}"], "larger than the model's 8"),
    ("too few heads left for random K", "niah", ["--mask_top", "-7", "--head_score", "{hs_tiny}"], "remain"),
    ("--needle without --question", "niah", ["--needle", "The code word is heron."], "go together"),
    ("--keep_full K larger than the heads", "niah", ["--keep_full", "9", "--head_score", "{hs_tiny}"],
     "--keep_full 9 is larger than the model's 8 heads"),
    ("--keep_full -K larger than the heads", "niah", ["--keep_full", "-9"], "--keep_full -9 is larger"),
    ("--keep_full K without head scores", "niah", ["--keep_full", "2", "--head_score", "{root}/none.json"],
     "does not exist"),
    ("negative --sink", "niah", ["--keep_full", "0", "--sink", "-1"], "--sink must be >= 0"),
    ("--recent 0", "niah", ["--keep_full", "0", "--recent", "0"], "--recent >= 1"),
    ("--sink + --recent cover the model's positions", "niah", ["--keep_full", "0", "--recent", "1024"],
     "cover the model's 1024 positions"),
    ("--phase unknown", "niah", ["--keep_full", "0", "--phase", "prefill"],
     "argument --phase: invalid choice: 'prefill'"),
    ("--keep_full value twice", "niah", ["--keep_full", "0", "0"], "--keep_full lists 0 twice"),
    ("--mask_top value twice", "niah", ["--mask_top", "2", "2", "--head_score", "{hs_tiny}"],
     "--mask_top lists 2 twice"),
    ("--seed beyond a seed", "niah", ["--keep_full", "-1", "--seed", "99999999999999999999999"], "is not a seed"),
    ("--seeds listed twice", "niah", ["--keep_full", "-1", "--seeds", "1", "1"], "--seeds lists 1 twice"),
    ("--sink not a number", "niah", ["--keep_full", "0", "--sink", "four"], "argument --sink: invalid int value"),
    ("--cache real without streaming", "niah", ["--cache", "real"], "--cache real is for streaming conditions"),
    ("--task unknown", "niah", ["--task", "needle"], "--task needle is not a task; choose from single"),
    ("--task listed twice", "niah", ["--task", "vt", "vt"], "--task lists a task twice"),
    ("--task_seed beyond a seed", "niah", ["--task", "vt", "--task_seed", "99999999999999999999999"], "is not a seed"),
    ("task prompt longer than the length", "niah", ["--task", "vt", "--context_lengths", "160"],
     "below the vt prompt's fixed overhead"),
    ("detect on two tasks at once", "detect", ["--task", "multikey", "vt"], "detection runs one task at a time"),
    ("--until_stable negative", "detect", ["--until_stable", "-3"], "--until_stable must be at least 1"),
    ("--confidence 0", "detect", ["--until_stable", "2", "--confidence", "0"], "--confidence 0 is not in (0, 1]"),
    ("--confidence above 1", "detect", ["--until_stable", "2", "--confidence", "1.5"], "not in (0, 1]"),
    ("--confidence NaN", "detect", ["--until_stable", "2", "--confidence", "nan"], "not in (0, 1]"),
    ("--draws 0", "detect", ["--until_stable", "2", "--draws", "0"], "--draws 0 is not in 1..100000"),
    ("--draws huge", "detect", ["--until_stable", "2", "--draws", "1000000000"], "is not in 1..100000"),
    ("--stop_rule unknown", "detect", ["--until_stable", "2", "--stop_rule", "sometimes"],
     "argument --stop_rule: invalid choice: 'sometimes'"),
    ("adaptive option without --until_stable", "detect", ["--confidence", "0.5"], "add --until_stable K"),
    ("detect --seed beyond a seed", "detect", ["--seed", "99999999999999999999999"], "is not a seed"),
    ("unknown option", "detect", ["--until-stable", "5"], "unrecognized arguments: --until-stable"),
    ("heads top --top 0", "heads", ["top", "{hs_tiny}", "--top", "0"], "--top 0 is not a count"),
    ("heads top of a missing file", "heads", ["top", "{root}/none.json"], "does not exist"),
    ("heads top of a folder", "heads", ["top", "{empty_hay}"], "is a folder, not a file"),
    ("heads compare of two shapes", "heads", ["compare", "{hs_tiny}", "{hs_other}"], "cannot compare a 2 x 4 grid"),
    ("heads heatmap --out a folder", "heads", ["heatmap", "{hs_tiny}", "--out", "{empty_hay}"],
     "is a folder; pass the PNG file"),
    ("heads heatmap --out under a file", "heads", ["heatmap", "{hs_tiny}", "--out", "{a_file}/x.png"],
     "not a writable folder"),
    ("export to an existing file", "heads",
     ["export", "{hs_tiny}", "--to", "layers", "--out", "{hs_tiny}", "--top", "1"],
     "exists; pass --overwrite"),
    ("export without the model's KV heads", "heads", ["export", "{hs_tiny}", "--to", "duo", "--out", "{out}", "--top",
                                                       "1"], "needs the model's number of KV heads"),
    ("export --top larger than the heads", "heads",
     ["export", "{hs_tiny}", "--to", "razor", "--out", "{out}/r.json", "--top", "9", "--kv_heads", "2"],
     "--top 9 is not 1..4"),
    ("export --top and --threshold", "heads", ["export", "{hs_tiny}", "--to", "layers", "--out", "{out}/l.json",
                                               "--top", "1", "--threshold", "0.1"], "pass only one"),
    ("export --threshold NaN", "heads", ["export", "{hs_tiny}", "--to", "layers", "--out", "{out}/l.json",
                                        "--threshold", "nan"], "is not a finite number"),
    ("export --kv_heads 0", "heads", ["export", "{hs_tiny}", "--to", "razor", "--out", "{out}/r.json", "--top", "1",
                                      "--kv_heads", "0"], "--kv_heads 0 is not a count"),
    ("export --to duo over a file", "heads", ["export", "{hs_tiny}", "--to", "duo", "--out", "{a_file}", "--top", "1",
                                              "--kv_heads", "2"], "is a file; --to duo writes a folder"),
    ("export --to an unknown format", "heads", ["export", "{hs_tiny}", "--to", "original", "--out", "{out}/o.json"],
     "argument --to: invalid choice: 'original'"),
    ("export of a foreign file out of range", "heads", ["export", "{hs_duo_range}", "--to", "razor", "--out",
                                                        "{out}/r.json", "--top", "1"], "outside [0, 1]"),
    ("stability --top larger than the heads", "heads", ["stability", "{trials}", "--top", "99"],
     "--top 99 is more than 8"),
    ("stability --draws 0", "heads", ["stability", "{trials}", "--top", "2", "--draws", "0"],
     "--draws 0 is not a count"),
    ("stability --draws huge", "heads", ["stability", "{trials}", "--top", "2", "--draws", "1000000000"],
     "is more than 100000"),
    ("stability --confidence 0", "heads", ["stability", "{trials}", "--top", "2", "--confidence", "0"],
     "--confidence 0 is not in (0, 1]"),
    ("stability --confidence above 1", "heads", ["stability", "{trials}", "--top", "2", "--confidence", "1.01"],
     "is not in (0, 1]"),
    ("stability --rows 0", "heads", ["stability", "{trials}", "--top", "2", "--rows", "0"], "--rows 0 is not a count"),
    ("stability --by of a head-score file", "heads", ["stability", "{hs_tiny}", "--top", "2", "--by", "length"],
     "needs a trial log"),
    ("stability of a missing trial log", "heads", ["stability", "{root}/none.trials.jsonl"], "does not exist"),
    ("stability of a folder", "heads", ["stability", "{empty_hay}"], "is a folder"),
    ("trial log line not JSON", "heads", ["stability", "{trials_broken}"], "line 1 is not JSON"),
    ("trial log line not a trial", "heads", ["stability", "{trials_nokeys}"], "line 1 is not a trial record"),
    ("trial log grids of two shapes", "heads", ["stability", "{trials_ragged}"], "not finite [layers][heads] grids"),
    ("trial log without a passed trial", "heads", ["stability", "{trials_nopass}"], "has no counted (passed) trial"),
    ("convergence --top 0", "heads", ["convergence", "{trials}", "--top", "0"], "--top 0 is not a count"),
    ("convergence --top larger than the heads", "heads", ["convergence", "{trials}", "--top", "9"],
     "--top 9 is more than 8"),
    ("convergence --orders 0", "heads", ["convergence", "{trials}", "--top", "2", "--orders", "0"],
     "--orders 0 is not a count"),
    ("convergence --orders huge", "heads", ["convergence", "{trials}", "--top", "2", "--orders", "100000000"],
     "is more than 100000"),
    ("convergence --out a folder", "heads", ["convergence", "{trials}", "--top", "2", "--out", "{empty_hay}"],
     "is a folder; pass the PNG file"),
    ("convergence --out under a file", "heads", ["convergence", "{trials}", "--top", "2", "--out", "{a_file}/c.png"],
     "not a writable folder"),
    ("plot of a file", "plot", ["{a_file}"], "is a file, not a folder"),
    ("plot of a folder without trials", "plot", ["{empty_hay}"], "holds no trial files"),
    ("compress --heads 0", "compress", ["{empty_hay}", "--heads", "0"], "--heads 0 is not a count"),
    ("compress of folders without streaming", "compress", ["{empty_hay}", "--out", "{out}/c.png"],
     "no streaming results"),
    ("judge without head files", "judge", [], "needs head-score files"),
    ("judge head file missing", "judge", ["--head_score", "{root}/none.json"], "does not exist"),
    ("judge head file of another model", "judge", ["--head_score", "{hs_other}"], "32 layers x 32 heads"),
    ("judge foreign head file malformed", "judge", ["--head_score", "{hs_razor_str}"], "(a string), not a KV head id"),
    ("judge --mask_top 0", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "0"],
     "--mask_top values must be positive"),
    ("judge on two tasks at once", "judge", ["--head_score", "{hs_tiny}", "--task", "vt", "single"],
     "the judge runs one task at a time"),
    ("judge K larger than the heads", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "9"],
     "larger than the model's 8"),
    ("judge K listed twice", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "1", "1"],
     "--mask_top lists 1 twice"),
    ("judge --seeds listed twice", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "1", "--seeds", "2", "2"],
     "--seeds lists 2 twice"),
    ("judge one method twice", "judge", ["--head_score", "{hs_tiny}", "{hs_tiny}", "--mask_top", "1"],
     "name the method 'retrieval'"),
    ("judge --resume", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "1", "--resume"], "does not resume"),
    ("judge output folder not writable", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "1", "--output_dir",
                                                    "{a_file}/sub"], "not a writable folder"),
    ("judge --press that ranks no heads", "judge", ["--head_score", "{hs_tiny}", "--press", "snapkv", "--budget",
                                                    "0.5"], "--press snapkv ranks no heads"),
    ("judge --mask_top with --press", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "1", "--press", "duo",
                                                "--budget", "0.5"], "--mask_top and --press ask different questions"),
    ("judge --press without --budget", "judge", ["--head_score", "{hs_tiny}", "--press", "headkv"],
     "--press headkv needs --budget F"),
    ("judge --budget without --press", "judge", ["--head_score", "{hs_tiny}", "--mask_top", "1", "--budget", "0.5"],
     "add --press NAME"),
    ("mask --phase context", "niah", ["--keep_full", "0", "--phase", "context"],
     "not in the needle test yet for streamed or masked heads"),
    ("--press unknown", "niah", ["--press", "snap", "--budget", "0.5"], "argument --press: invalid choice: 'snap'"),
    ("--press without --budget", "niah", ["--press", "snapkv"], "--press snapkv needs --budget F"),
    ("--budget without --press", "niah", ["--budget", "0.5"], "add --press NAME"),
    ("--budget above 1", "niah", ["--press", "snapkv", "--budget", "1.5"], "--budget 1.5 is not a share of the KV"),
    ("--budget 0", "niah", ["--press", "snapkv", "--budget", "0"], "--budget 0 is not a share of the KV cache"),
    ("--budget listed twice", "niah", ["--press", "knorm", "--budget", "0.5", "0.5"], "--budget lists 0.5 twice"),
    ("--press_args not key=value", "niah", ["--press", "snapkv", "--budget", "0.5", "--press_args", "window"],
     "--press_args window is not key=value"),
    ("--press_args unknown parameter", "niah", ["--press", "snapkv", "--budget", "0.5", "--press_args", "alpha=0.1"],
     "--press snapkv has no parameter alpha"),
    ("--press_args value of another type", "niah",
     ["--press", "snapkv", "--budget", "0.5", "--press_args", "window=wide"], "snapkv's window is an int"),
    ("--press_args value the press refuses", "niah",
     ["--press", "snapkv", "--budget", "0.5", "--press_args", "kernel=4"], "kernel odd"),
    ("--press duo without a head file", "niah", ["--press", "duo", "--budget", "0.5"],
     "--press duo ranks heads by a head file: pass --head_score FILE"),
    ("--press headkv, head file of another model", "niah",
     ["--press", "headkv", "--budget", "0.5", "--head_score", "{hs_other}"], "32 layers"),
    ("--press with --phase all", "niah", ["--press", "knorm", "--budget", "0.5", "--phase", "all"],
     "--phase all is streaming's"),
    ("generate prompt file missing", "generate", ["{root}/none.txt", "--keep_full", "1", "--head_score", "{hs_tiny}"],
     "does not exist"),
    ("generate with both --keep_full and --keep_fraction", "generate",
     ["{a_file}", "--keep_full", "1", "--keep_fraction", "0.5", "--head_score", "{hs_tiny}"], "not both"),
    ("generate --keep_fraction outside 0..1", "generate", ["{a_file}", "--keep_fraction", "1.5", "--head_score",
                                                          "{hs_tiny}"], "values in 0..1"),
    ("generate K larger than the query heads", "generate", ["{a_file}", "--keep_full", "9", "--head_score",
                                                           "{hs_tiny}"], "the model has 8 query heads"),
    ("generate K larger than the KV heads", "generate", ["{a_file}", "--keep_full", "5", "--unit", "kv",
                                                        "--head_score", "{hs_tiny}"], "the model has 4 KV heads"),
    ("generate prompt file empty", "generate", ["{empty_txt}"], "is empty"),
    ("generate prompt longer than the model's positions", "generate", ["{a_file}", "--max_new_tokens", "100000"],
     "positions"),
    ("generate sink + recent cover the positions", "generate", ["{a_file}", "--keep_full", "0", "--sink", "4",
                                                                "--recent", "4096"],
     "cover the model's"),
    ("generate phase context without a question", "generate", ["{a_file}", "--phase", "context", "--keep_full",
                                                               "0"], "pass --question"),
    ("generate chat template file missing", "generate", ["{a_file}", "--chat_template", "{root}/none.jinja"],
     "no such file"),
    ("generate head_score file missing", "generate", ["{a_file}", "--keep_full", "1", "--head_score",
                                                     "{root}/none.json"], "does not exist"),
    ("generate keeps heads without a head_score", "generate", ["{a_file}", "--keep_full", "1"], "pass --head_score"),
    ("generate --press without --budget", "generate", ["{a_file}", "--press", "knorm"], "needs --budget F"),
    ("generate --press with --keep_full", "generate",
     ["{a_file}", "--press", "knorm", "--budget", "0.5", "--keep_full", "1", "--head_score", "{hs_tiny}"],
     "not both"),
    ("generate --press duo without a head file", "generate", ["{a_file}", "--press", "duo", "--budget", "0.5"],
     "--press duo ranks heads by a head file"),
    ("leaderboard press unknown", "leaderboard", ["--press", "snap"], "'snap' is not a press"),
    ("leaderboard ranking of a press that ranks no heads", "leaderboard", ["--press", "snapkv@random"],
     "only duo and headkv take a ranking"),
    ("leaderboard press listed twice", "leaderboard", ["--press", "knorm", "knorm"], "--press lists knorm twice"),
    ("leaderboard without a press", "leaderboard", ["--press", "full"], "names no press"),
    ("leaderboard budget above 1", "leaderboard", ["--press", "knorm", "--budget", "2"], "--budget 2 is not a share"),
    ("leaderboard --draws 0", "leaderboard", ["--press", "knorm", "--draws", "0"], "--draws 0 is not in 1..100000"),
    ("leaderboard duo without a head file", "leaderboard", ["--press", "duo", "duo@random"],
     "--press duo ranks heads by a head file: pass --head_score FILE"),
    ("leaderboard output folder not writable", "leaderboard", ["--press", "knorm", "--output_dir", "{a_file}/sub"],
     "not a writable folder"),
]
# The weights are what these cases are about (the refusal by class name runs the model).
NEEDS_WEIGHTS = {"weights file truncated", "attention not through the interface"}
GRID = ["--s", "300", "--e", "300", "--num_lengths", "1", "--depth_percents", "50", "--quiet"]
MODEL = ["--model_path", "{tiny}", "--needles", "{needles_ok}"]
# the options every case of a command shares: the model run ones write under --output_dir, the
# others name their outputs in the case ({out}: the folder that must stay uncreated)
DEFAULTS = {"detect": MODEL + GRID + ["--output_dir", "{out}"],
            "niah": MODEL + GRID + ["--no_plot", "--output_dir", "{out}"],
            "judge": MODEL + GRID + ["--output_dir", "{out}"], "heads": [], "plot": [], "compress": [],
            "generate": ["--model_path", "{tiny}"],
            "leaderboard": MODEL + ["--context_lengths", "300", "--depth_percents", "50", "--quiet", "--output_dir",
                                    "{out}"]}
COMMAND = {"detect": "detect", "niah": "mask", "judge": "judge", "heads": "heads", "plot": "plot",
           "compress": "compress", "generate": "generate", "leaderboard": "leaderboard"}


PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
START, END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
HEADER = "| bad input | what the user sees (exit 2) |\n|---|---|"


def doc_row(what: str, stderr: str, *roots: Path | str) -> str:
    """A case's row of the page: what it printed, each temporary folder written as "…"."""
    msg = stderr.strip()
    for root in sorted(map(str, roots), key=len, reverse=True):
        msg = msg.replace(root, "…")
    msg = msg.replace("|", "\\|")
    return f"| {what} | `{msg}` |"


def doc_rows() -> list[str]:
    """The rows of the page's table, as written."""
    text = PAGE.read_text(encoding="utf-8")
    table = text[text.index(START) + len(START):text.index(END)].strip()
    assert table.startswith(HEADER), f"{PAGE.name}: the table's header changed"
    return table[len(HEADER):].strip().splitlines()


def run_case(cmd: str, args: list[str], paths: dict, out: Path) -> int:
    """One case through the console command (``retrieval-head``), as a user types it."""
    fill = lambda a: a.format(root=out.parent, out=out, **{k: v for k, v in paths.items() if k != "out"})  # noqa: E731
    head, rest = (args[:1], args[1:]) if cmd == "heads" else ([], args)  # the subcommand comes first
    try:
        return commands.main([COMMAND[cmd]] + [fill(a) for a in head + DEFAULTS[cmd] + rest])
    except SystemExit as e:  # a command line argparse refuses: its one line is printed, the process exits
        return e.code


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, default_tokenizer):
    return make_inputs(tmp_path_factory.mktemp("bad"), default_tokenizer)


def _tree(root: Path) -> dict:
    return {str(f): f.read_bytes() for f in root.rglob("*") if f.is_file()}


@pytest.mark.parametrize("what,cmd,args,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input(inputs, tmp_path, capsys, monkeypatch, what, cmd, args, phrase):
    """And every case but the weights' own is refused before any weight is loaded."""
    import transformers

    if what not in NEEDS_WEIGHTS:
        def no_weights(*a, **k):
            raise AssertionError(f"{what}: weights loaded before the inputs were checked")
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    out = tmp_path / "results"
    before = _tree(inputs["out"].parent)
    code = run_case(cmd, args, inputs, out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and phrase in err[0], err
    assert not out.exists()  # nothing created
    assert _tree(inputs["out"].parent) == before  # nothing of theirs changed
    shown = {r[2:r.index(" | ")]: r for r in doc_rows()}.get(what)
    printed = doc_row(what, err[0], inputs["out"].parent, tmp_path)
    assert shown == printed, (f"docs/troubleshooting.md shows {shown}, the CLI printed {printed}; "
                              "run python tests/test_bad_inputs.py --docs")


def test_troubleshooting_lists_every_case():
    """One row per case, in the cases' order, each holding its phrase (nothing is run here;
    each row's exact text is checked by the case's own test)."""
    rows = doc_rows()
    assert [r[2:r.index(" | ")] for r in rows] == [c[0] for c in CASES], \
        "docs/troubleshooting.md's rows are not the cases: run python tests/test_bad_inputs.py --docs"
    for row, (what, _, _, phrase) in zip(rows, CASES):
        assert phrase.replace("|", "\\|") in row, (what, phrase)


def test_existing_outputs_untouched_without_flags(inputs, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    mine = out / "tiny.json"
    mine.write_text("my results\n")
    code = run_case("detect", [], inputs, out)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--overwrite" in err and "--resume" in err
    assert mine.read_text() == "my results\n" and [p.name for p in out.iterdir()] == ["tiny.json"]


def test_disk_full_mid_run_keeps_earlier_results(inputs, tmp_path, capsys, monkeypatch):
    from retrieval_head.store.trials import TrialLog

    real, calls = TrialLog.append, []

    def append(self, record):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real(self, record)

    monkeypatch.setattr(TrialLog, "append", append)
    out = tmp_path / "results"
    code = run_case("detect", ["--depth_percents", "20", "80"], inputs, out)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 28 and len(err) == 1 and "no space left" in err[0] and "--resume" in err[0]
    log = (out / "tiny.trials.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["depth_percent"] == 20
    assert json.loads((out / "tiny.manifest.json").read_text())["status"] == "running"


if __name__ == "__main__":  # docs/troubleshooting.md's table, from what the CLI really prints
    import contextlib
    import io
    import tempfile

    from transformers import AutoTokenizer

    from retrieval_head.models.embedded import default_model_dir

    lines = [HEADER]
    with tempfile.TemporaryDirectory() as d:
        paths = make_inputs(Path(d), AutoTokenizer.from_pretrained(default_model_dir()))
        for what, cmd, args, _ in CASES:
            buf = io.StringIO()
            with contextlib.redirect_stderr(buf):
                run_case(cmd, args, paths, Path(d) / "results")
            lines.append(doc_row(what, buf.getvalue(), d))
    table = "\n".join(lines)
    print(table)
    if "--docs" in sys.argv[1:]:  # replace the table between the page's markers
        text = PAGE.read_text(encoding="utf-8")
        a, b = text.index(START) + len(START), text.index(END)
        PAGE.write_text(text[:a] + "\n" + table + "\n" + text[b:], encoding="utf-8")
    sys.exit(0)
