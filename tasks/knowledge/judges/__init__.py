"""Judges added to the built-in ones (tasks/knowledge/__init__.py), one module each. A module
here registers a maker of its judge from the LLM settings, and nothing else names it::

    from tasks.knowledge import JUDGES
    from tasks.knowledge.decision import Decision

    class KeepNothing:  # the protocol: tasks.knowledge.planner.Judge
        name = "keep-nothing"
        def decide(self, question, vocabulary) -> Decision: ...

    JUDGES.register("keep-nothing")(lambda llm: KeepNothing())

``knowledge.judge: keep-nothing`` (or ``tailforge plan --judge keep-nothing``) then selects it.
"""
