//! The plan-and-execute agent: plan, run the steps one by one, answer.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AgentConfig, ChatModel, Message, Role, Tool, Toolbox};
use crate::error::BoxError;
use crate::graph::{CompiledGraph, GraphError, NodeContext, StateGraph, END};

/// The state of a planner agent ([`create_planner_agent`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlannerState {
    /// What the user wants.
    pub goal: String,
    /// The plan: one step per line of the model's plan.
    pub steps: Vec<String>,
    /// The result (the model's final reply) of each finished step, in order.
    pub results: Vec<String>,
    /// The whole conversation with the model (without the system prompt).
    pub messages: Vec<Message>,
    /// Model calls made by the `"execute"` node so far.
    pub iterations: usize,
    /// The final answer, once the `"answer"` node ran.
    pub answer: Option<String>,
    /// Whether the agent finished.
    pub done: bool,
    /// Why the plan was not carried out in full, e.g. "stopped after 10 iterations".
    pub error: Option<String>,
}

impl PlannerState {
    /// A fresh run towards `goal`.
    pub fn new(goal: impl Into<String>) -> Self {
        PlannerState {
            goal: goal.into(),
            ..PlannerState::default()
        }
    }

    /// The step being worked on (the first without a result), if any.
    pub fn current_step(&self) -> Option<&str> {
        self.steps.get(self.results.len()).map(String::as_str)
    }

    fn waiting_for_tools(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant && !m.tool_calls.is_empty())
    }
}

/// The steps of a plan: its non-empty lines, without list markers ("1.", "2)", "-", "*").
fn parse_steps(plan: &str) -> Vec<String> {
    plan.lines()
        .map(|line| {
            let line = line.trim();
            let digits = line.trim_start_matches(|c: char| c.is_ascii_digit());
            let rest = if digits.len() < line.len() {
                digits
                    .strip_prefix('.')
                    .or_else(|| digits.strip_prefix(')'))
                    .unwrap_or(line)
            } else {
                line.strip_prefix("- ")
                    .or_else(|| line.strip_prefix("* "))
                    .unwrap_or(line)
            };
            rest.trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Builds the plan-and-execute graph:
///
/// - `"plan"`: asks the model (without tools) for a plan for the goal, one step per line; the
///   lines become [`PlannerState::steps`].
/// - `"execute"`: sends the next step as a user message and asks the model (with the tools).
///   If it asks for tools, `"tools"` runs them and `"execute"` asks again about the same step;
///   otherwise its reply is the step's result. Loops until every step has a result, or
///   [`AgentConfig::max_iterations`] model calls were made (then `error` is set).
/// - `"answer"`: asks the model (without tools) for the final answer, stored in
///   [`PlannerState::answer`].
///
/// Every model call (task `"model"` of its node) and tool call (task `"tool:<call id>"` of node
/// `"tools"`) is journaled (see [the module](super)); with [`AgentConfig::approve_tool_calls`],
/// node `"tools"` asks before each tool call, as the ReAct agent's does. Fails with
/// [`GraphError::NoCheckpointer`] when approval is asked for without a checkpointer.
pub fn create_planner_agent(
    model: Arc<dyn ChatModel>,
    tools: Vec<Arc<dyn Tool>>,
    config: AgentConfig,
) -> Result<CompiledGraph<PlannerState>, GraphError> {
    let toolbox = Toolbox::new(model, tools, &config);
    let max = config.max_iterations;
    let mut g = StateGraph::<PlannerState>::new();

    let tb = toolbox.clone();
    g.add_node_with_context("plan", move |mut s: PlannerState, ctx: NodeContext| {
        let tb = tb.clone();
        async move {
            s.messages.push(Message::user(format!(
                "Make a plan to reach this goal, one step per line, nothing else:\n{}",
                s.goal
            )));
            let reply = tb.ask(&ctx, &s.messages, false).await?;
            s.steps = parse_steps(&reply.content);
            s.messages.push(reply);
            Ok::<_, BoxError>(s)
        }
    });

    let tb = toolbox.clone();
    g.add_node_with_context("execute", move |mut s: PlannerState, ctx: NodeContext| {
        let tb = tb.clone();
        async move {
            let Some(step) = s.current_step().map(str::to_owned) else {
                return Ok(s);
            };
            // After tool results, the model continues the same step.
            if s.messages.last().is_none_or(|m| m.role != Role::Tool) {
                let n = s.results.len() + 1;
                s.messages.push(Message::user(format!(
                    "Carry out step {n} of {}: {step}",
                    s.steps.len()
                )));
            }
            let reply = tb.ask(&ctx, &s.messages, true).await?;
            s.iterations += 1;
            if reply.tool_calls.is_empty() {
                s.results.push(reply.content.clone());
            }
            s.messages.push(reply);
            if s.iterations >= max && s.current_step().is_some() {
                s.error = Some(format!("stopped after {} iterations", s.iterations));
            }
            Ok::<_, BoxError>(s)
        }
    });

    let tb = toolbox.clone();
    g.add_node_with_context("tools", move |mut s: PlannerState, ctx: NodeContext| {
        let tb = tb.clone();
        async move {
            let calls = s
                .messages
                .last()
                .filter(|m| m.role == Role::Assistant)
                .map(|m| m.tool_calls.clone())
                .unwrap_or_default();
            let results = tb.run_tools(&ctx, &calls).await?;
            s.messages.extend(results);
            Ok::<_, BoxError>(s)
        }
    });

    let tb = toolbox;
    g.add_node_with_context("answer", move |mut s: PlannerState, ctx: NodeContext| {
        let tb = tb.clone();
        async move {
            s.messages.push(Message::user(format!(
                "Using the results of the steps above, give the final answer to: {}",
                s.goal
            )));
            let reply = tb.ask(&ctx, &s.messages, false).await?;
            s.answer = Some(reply.content.clone());
            s.messages.push(reply);
            s.done = true;
            Ok::<_, BoxError>(s)
        }
    });

    g.add_conditional_edges("plan", |s: &PlannerState| {
        if s.steps.is_empty() {
            "answer".into()
        } else {
            "execute".into()
        }
    });
    g.add_conditional_edges("execute", |s: &PlannerState| {
        if s.error.is_some() || s.current_step().is_none() {
            "answer".into()
        } else if s.waiting_for_tools() {
            "tools".into()
        } else {
            "execute".into()
        }
    });
    g.add_edge("tools", "execute");
    g.add_edge("answer", END);
    g.set_entry_point("plan");
    g.compile(config.compile_config()?)
}

#[cfg(test)]
mod tests {
    use super::parse_steps;

    #[test]
    fn plan_lines_become_steps() {
        assert_eq!(
            parse_steps("1. search\n\n2) add\n- reply\n* done\n  plain  \n2024 budget"),
            ["search", "add", "reply", "done", "plain", "2024 budget"]
        );
    }
}
