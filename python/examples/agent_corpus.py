"""Runs LangGraph graphs on a CkptSaver store: the corpus the LangGraph frame dictionary was
trained on (``examples/train_frame_dict.rs``; see ``src/codec/dict.rs``).

``python examples/agent_corpus.py STORE_URL [--threads 6] [--turns 40] [--seed 5]``

Two graphs, neither of them python/bench.py's (whose figures the dictionary must not flatter):

- a tool-calling agent (``agent`` -> ``tools`` -> ``agent``) over langchain-core messages
  (``add_messages``): every turn a human question, an AI message calling a tool, the tool's
  answer and the AI's reply, with ids, tool-call ids and usage metadata;
- the README's plan/answer graph (two nodes, a list of strings and a counter).
"""

from __future__ import annotations

import argparse
import operator
import random
import string
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from ckpt_langgraph import CkptSaver

CITIES = ["Paris", "Lagos", "Lima", "Osaka", "Oslo", "Quito", "Pune", "Perth", "Riga", "Sucre"]


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(n))


def build_agent(saver: CkptSaver, rng: random.Random) -> Any:
    def agent(state: AgentState) -> dict:
        last = state["messages"][-1]
        n = len(state["messages"])
        usage = {"input_tokens": 40 * n, "output_tokens": rng.randint(5, 90), "total_tokens": 40 * n + 50}
        if isinstance(last, HumanMessage):
            city = rng.choice(CITIES)
            call = {"name": "get_weather", "args": {"city": city}, "id": f"call_{rng.getrandbits(64):x}", "type": "tool_call"}
            return {"messages": [AIMessage(content="", id=f"run-{rng.getrandbits(96):x}", tool_calls=[call], usage_metadata=usage)]}
        return {"messages": [AIMessage(content=words(rng, rng.randint(8, 60)), id=f"run-{rng.getrandbits(96):x}", usage_metadata=usage)]}

    def tools(state: AgentState) -> dict:
        call = state["messages"][-1].tool_calls[0]
        text = f"It is {rng.randint(-5, 35)} C and {rng.choice(['sunny', 'rainy', 'windy'])} in {call['args']['city']}."
        return {"messages": [ToolMessage(content=text, tool_call_id=call["id"], name=call["name"], id=f"tool-{rng.getrandbits(64):x}")]}

    def route(state: AgentState) -> str:
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else END

    g = StateGraph(AgentState)
    g.add_node("agent", agent)
    g.add_node("tools", tools)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", route, ["tools", END])
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=saver)


class PlanState(TypedDict):
    messages: Annotated[list[str], operator.add]
    turns: int


def build_plan(saver: CkptSaver) -> Any:
    def plan(state: PlanState) -> dict:
        return {"messages": [f"plan for turn {state.get('turns', 0) + 1}"]}

    def answer(state: PlanState) -> dict:
        return {"messages": [f"answer {len(state['messages'])}"], "turns": state.get("turns", 0) + 1}

    g = StateGraph(PlanState)
    g.add_node("plan", plan)
    g.add_node("answer", answer)
    g.add_edge(START, "plan")
    g.add_edge("plan", "answer")
    g.add_edge("answer", END)
    return g.compile(checkpointer=saver)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--threads", type=int, default=6)
    p.add_argument("--turns", type=int, default=40)
    p.add_argument("--seed", type=int, default=5)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with CkptSaver.from_url(args.url) as saver:
        agent, planner = build_agent(saver, rng), build_plan(saver)
        for t in range(args.threads):
            for turn in range(args.turns):
                config = {"configurable": {"thread_id": f"agent-{t}"}}
                agent.invoke({"messages": [HumanMessage(content=words(rng, rng.randint(4, 30)), id=f"human-{rng.getrandbits(64):x}")]}, config)
                planner.invoke({"messages": [words(rng, 6)], "turns": turn}, {"configurable": {"thread_id": f"plan-{t}"}})


if __name__ == "__main__":
    main()
