"""Dataset loaders in the published formats: financial-news sentiment, WebGLM-QA, OASST1.

Import the submodule for the task: ``phi2kit.data.sentiment``, ``phi2kit.data.webglm``,
``phi2kit.data.oasst``.
"""
