"""The dispatcher's policy stages, decided for each (recipient, channel) of a message.

Each stage is one module with one contract (`dispatcher.stages.base.Stage`): given the
deliveries still standing, it says of each whether it goes on (None) or what becomes of it (a
`Verdict`). They run in this fixed order; the first final verdict decides the delivery's fate
and names its stage in the trace:

1. expiry and cancel: the message as a whole (in `dispatcher.dispatch`, before any of these);
2. `unreachable`: the channel has no address, device or endpoint for the recipient: `failed`,
   and the message's `fallback` channel takes over when it has one;
3. `rendering`: the channel's part of the content, rendered when the message was accepted;
   none for this channel: `failed`;
4. `discard`: the app's discard switch, for all its messages or some templates: `canceled`;
5. `preferences`: the recipient opted out of the category on the channel: `suppressed`
   (`verification` cannot be opted out of);
6. `quiet_hours`: inside the recipient's quiet hours: `deferred` to their end; not final, the
   later stages still apply and decide what is sent then;
7. `dedup`: the same content (or `dedup_key`) to the same recipient and channel within the
   app's window: `deduplicated`;
8. `frequency_cap`: over the app's cap for the recipient, channel and category: `throttled`.

Stages 7 and 8 keep their state in Redis, one Lua script per check-and-count, so any number of
dispatchers agree.
"""
