from quicframe.wire import MARKET_TICK_CODEC, FrameDecoder, MarketTick


def test_tick_roundtrip_through_decoder() -> None:
    tick = MarketTick(1, 2, 3, 4, 5, 6, 1, 2)
    decoder = FrameDecoder()
    decoder.feed(MARKET_TICK_CODEC.encode_frame(tick) * 3)
    assert decoder.drain_values(MARKET_TICK_CODEC) == [tick, tick, tick]
