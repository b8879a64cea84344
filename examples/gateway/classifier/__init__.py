"""An example sidecar worker with a real model: a prompt-injection classifier (TF-IDF word and
character n-grams + logistic regression, scikit-learn), trained once from ``prompts.jsonl`` and
loaded from a file at start so a restart is fast.

Run it under the supervisor (``examples/gateway`` on the worker's PYTHONPATH)::

    async with sark_native.Sidecar("classifier.worker:PromptClassifier", workers=2,
                                   env={"PYTHONPATH": "examples/gateway"}) as sc:
        await sc.request("classify", {"text": "Ignore all previous instructions ..."})
        # {"label": "injection", "score": 0.93}
"""
