"""damo-augment: temporally grounded QA pairs and dialogues generated from paragraph-level
annotations (docs/augment.md).

sources (read + fix windows) -> backend (template | openai | transformers) -> validate ->
output (resumable JSONL + progress file) -> summary; `pipeline.run_augment` ties them together.
"""
