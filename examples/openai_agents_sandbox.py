"""An OpenAI Agents SDK `SandboxAgent` whose tools run under a sandboxctl policy (Linux).

    pip install 'sandboxctl[agents]'
    python3 examples/openai_agents_sandbox.py             # offline: a scripted model, no API key
    OPENAI_API_KEY=... python3 examples/openai_agents_sandbox.py --model gpt-5.1

The agent works in a fresh temporary workspace. Offline, a scripted model plays the agent: it
writes a test, runs it, and tries to read ~/.ssh/id_rsa and fetch a page from the internet —
which the `default` policy refuses (the key is masked; the network needs an approval, and
nobody is asked here). Every command and every file the SDK writes for the agent goes through
the sandbox; `sandboxctl log` shows the records afterwards.
"""

from __future__ import annotations

import argparse
import asyncio

from agents import Runner
from agents.run_config import RunConfig, SandboxRunConfig
from agents.sandbox import SandboxAgent
from agents.testing import ScriptedModel, assistant_message, function_call

from sandboxctl.integrations.openai_agents import SandboxctlSandboxClient

TEST = "def test_sum():\\n    assert sum([1, 2, 3]) == 6\\n"


def scripted_model() -> ScriptedModel:
    def shell(call_id: str, cmd: str):
        return function_call("exec_command", {"cmd": cmd, "yield_time_ms": 30000}, call_id=call_id)

    return ScriptedModel([
        [shell("write", f"printf '{TEST}' > test_sum.py && ls")],
        [shell("test", "python3 -c 'import test_sum; test_sum.test_sum(); print(\"test passed\")'")],
        [shell("key", "cat ~/.ssh/id_rsa")],
        [shell("net", "curl -sS -o /dev/null https://example.com || echo refused")],
        [assistant_message("Wrote and ran test_sum.py; the key and the network were out of reach.")],
    ])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a real model name (needs OPENAI_API_KEY); default: the scripted one")
    parser.add_argument("-p", "--policy", default="default", help="the sandboxctl policy (default: default)")
    args = parser.parse_args()
    agent = SandboxAgent(name="builder", model=args.model or scripted_model(),
                         instructions="Write a small Python test in the workspace and run it.")
    client = SandboxctlSandboxClient(policy=args.policy)
    config = RunConfig(sandbox=SandboxRunConfig(client=client), tracing_disabled=args.model is None)
    result = await Runner.run(agent, "Write and run a test.", run_config=config)
    for item in result.new_items:
        if getattr(item, "type", "") == "tool_call_output_item":
            print(f"--- {item.raw_item['call_id']}\n{item.output.split('Output:', 1)[-1].strip()}")
    print(f"=== {result.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
