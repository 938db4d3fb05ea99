/**
 * The agent protocol's handlers on the control socket (protocol.ts: `agent.register`,
 * `prompt.answer`, `prompts`), over the prompt broker (./prompts.ts). A registered agent lives
 * as long as its connection: the close hook unregisters it.
 *
 * An agent's connection gets the `prompt` topic and the `budget` topic: a budget's warning, its
 * exhaustion and its room again reach the prompt agents of its user (and everyone's for a budget
 * of the whole uplink: the bus routes them, events.ts), whatever events.subscribe asks.
 */
import type { PromptAnswer } from '../prompt/prompt.js';
import type { Handlers } from './protocol.js';
import { PromptError, type PromptBroker } from './prompts.js';
import { RequestError } from './server.js';

export type AgentHandlers = Pick<Handlers, 'agent.register' | 'prompt.answer' | 'prompts'>;

/** The topics a prompt agent's connection gets for as long as it is open. */
export const AGENT_TOPICS = ['prompt', 'budget'] as const;

/** A broker's refusal as the control socket sends it; anything else is left as it is. */
function wire(e: unknown): unknown {
  return e instanceof PromptError ? new RequestError({ code: e.code, message: e.message }) : e;
}

export function agentHandlers(broker: PromptBroker): AgentHandlers {
  return {
    'agent.register': (params, cred, ctx) => {
      try {
        const { handle, fresh } = broker.register(ctx.connection, { uid: cred.uid, pid: cred.pid, name: params.name, kinds: params.kinds });
        // Subscribed and listed in one go (nothing runs in between): every prompt it may answer
        // is either in the list or comes as an event, never both, never neither.
        let topics;
        try {
          topics = ctx.addTopics(AGENT_TOPICS);
        } catch (e) {
          if (fresh) handle.unregister(); // an agent that would never hear of a prompt
          throw e;
        }
        if (fresh) ctx.onClose(() => handle.unregister());
        return Promise.resolve({ agent: handle.info, prompts: broker.visible(cred.uid), queued: broker.queued(cred.uid), topics });
      } catch (e) {
        return Promise.reject(wire(e));
      }
    },
    'prompt.answer': (params, cred) => {
      const answer: PromptAnswer = {
        choice: params.choice, scope: params.scope,
        ...(params.minutes !== undefined ? { minutes: params.minutes } : {}),
        ...(params.allDestinations !== undefined ? { allDestinations: params.allDestinations } : {}),
      };
      try {
        return Promise.resolve({ id: params.id, outcome: broker.answer(params.id, cred.uid, answer) });
      } catch (e) {
        return Promise.reject(wire(e));
      }
    },
    prompts: (_params, cred) => Promise.resolve({ prompts: broker.visible(cred.uid), queued: broker.queued(cred.uid), agents: broker.agentsOf(cred.uid) }),
  };
}
