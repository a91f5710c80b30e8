"""The README's example: a two-node graph on CkptSaver, run twice on one thread, then its
history. `python examples/quickstart.py [STORE_URL]` (default sled://./ckpt-data)."""

import operator
import sys
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from ckpt_langgraph import CkptSaver


class State(TypedDict):
    messages: Annotated[list[str], operator.add]
    turns: int


def plan(state: State) -> dict:
    return {"messages": [f"plan for turn {state.get('turns', 0) + 1}"]}


def answer(state: State) -> dict:
    return {"messages": [f"answer {len(state['messages'])}"], "turns": state.get("turns", 0) + 1}


builder = StateGraph(State)
builder.add_node("plan", plan)
builder.add_node("answer", answer)
builder.add_edge(START, "plan")
builder.add_edge("plan", "answer")
builder.add_edge("answer", END)

saver = CkptSaver.from_url(sys.argv[1] if len(sys.argv) > 1 else "sled://./ckpt-data")
graph = builder.compile(checkpointer=saver)
config = {"configurable": {"thread_id": "chat-1"}}
graph.invoke({"messages": ["hello"], "turns": 0}, config)
final = graph.invoke({"messages": ["and again"]}, config)
print(final["messages"])
for snapshot in graph.get_state_history(config):
    print(snapshot.config["configurable"]["checkpoint_id"], snapshot.metadata["step"], snapshot.next)
