pub struct RedisProvider;
pub fn provider() -> RedisProvider {
    RedisProvider
}
