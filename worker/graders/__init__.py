"""Graders: score a model's answer to a prompt, in OpenAI's grader shapes (`openai.types.graders`).

`spec.parse_grader` checks a grader's JSON and returns frozen dataclasses; `scoring.grade` scores one sample
against one dataset row; `python_sandbox.PythonSandbox` runs a user's `grade(sample, item)` in a capped child
process; `formula` parses a multi grader's `calculate_output` (never `eval`); `text_metrics` holds the
similarity metrics; `templates` fills `{{item.x}}` and `{{sample.output_text}}`.
"""
