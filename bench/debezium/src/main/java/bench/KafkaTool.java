package bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.record.TimestampType;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.Statement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.BitSet;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.stream.Collectors;

/**
 * Kafka and load helpers of bench/mysql-kafka (same classpath as {@link DebeziumCatchup}: the
 * kafka-clients, Jackson and MariaDB JDBC jars Debezium brings along).
 *
 * <p>Usage: {@code java -cp ... bench.KafkaTool COMMAND key=value...}
 * <ul>
 *   <li>{@code create brokers= topics=a,b partitions=3 log_append_time=true|false}: creates the
 *       topics (replication factor 1), with {@code message.timestamp.type=LogAppendTime} if asked,
 *       and waits until every partition has a leader.</li>
 *   <li>{@code delete brokers= prefix=P}: deletes every topic whose name starts with P; prints
 *       {@code DELETED name...}.</li>
 *   <li>{@code watch brokers= topics=a,b [n=N] [interval_ms=10]}: polls the sum of the topics'
 *       end offsets (high watermarks: with acks=all on one broker, the records the producers had
 *       acknowledged) and prints {@code AT total} whenever it changes; with N, exits 0 right
 *       after printing a total of at least N.</li>
 *   <li>{@code latency brokers= topic= [skip_ids_upto=K]}: reads the topic from the beginning
 *       to its end offsets; for each change value with {@code after.ts} (epoch microseconds set
 *       by the writer in the row) and {@code after.id > K}: latency = record timestamp (which
 *       must be LogAppendTime, the broker's append clock, ms) - ts. Prints one JSON line.</li>
 *   <li>{@code writer host= port= user= password= db= table= rate=5000 rows=50 seconds=60
 *       warmup=5}: every rows/rate s, one autocommit {@code INSERT ... SELECT} of {@code rows}
 *       rows (ids 1, 2, ... from the Sequence engine) whose {@code ts} column is
 *       {@code UNIX_TIMESTAMP(NOW(6))} in microseconds, for warmup + seconds. Prints
 *       {@code WARM} when the warm-up is written and one {@code WROTE ...} line at the end.</li>
 *   <li>{@code warm brokers= topic= records=N}: produces N change-event-like JSON records
 *       (~800 bytes, keyed, lz4, acks=all, idempotent) so that the broker's JIT has compiled its
 *       produce path before anything is measured; prints {@code WARMED ...}.</li>
 * </ul>
 */
public final class KafkaTool {
    public static void main(String[] argv) throws Exception {
        if (argv.length == 0) {
            throw new IllegalArgumentException("usage: KafkaTool create|delete|watch|latency|writer key=value...");
        }
        Map<String, String> a = new HashMap<>();
        for (String s : Arrays.copyOfRange(argv, 1, argv.length)) {
            int i = s.indexOf('=');
            if (i < 0) {
                throw new IllegalArgumentException("expected key=value, got " + s);
            }
            a.put(s.substring(0, i), s.substring(i + 1));
        }
        switch (argv[0]) {
            case "create" -> create(a);
            case "delete" -> delete(a);
            case "watch" -> watch(a);
            case "latency" -> latency(a);
            case "writer" -> writer(a);
            case "warm" -> warm(a);
            default -> throw new IllegalArgumentException("unknown command " + argv[0]);
        }
        System.exit(0);
    }

    private static Admin admin(Map<String, String> a) {
        Properties p = new Properties();
        p.setProperty(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, req(a, "brokers"));
        p.setProperty(AdminClientConfig.CLIENT_ID_CONFIG, "bench-kafkatool");
        return Admin.create(p);
    }

    private static List<String> topics(Map<String, String> a) {
        return Arrays.stream(req(a, "topics").split(",")).filter(s -> !s.isEmpty()).collect(Collectors.toList());
    }

    private static void create(Map<String, String> a) throws Exception {
        int partitions = Integer.parseInt(a.getOrDefault("partitions", "1"));
        boolean logAppend = Boolean.parseBoolean(a.getOrDefault("log_append_time", "false"));
        List<String> names = topics(a);
        try (Admin admin = admin(a)) {
            List<NewTopic> news = new ArrayList<>();
            for (String t : names) {
                NewTopic nt = new NewTopic(t, partitions, (short) 1);
                if (logAppend) {
                    nt.configs(Map.of("message.timestamp.type", "LogAppendTime"));
                }
                news.add(nt);
            }
            admin.createTopics(news).all().get(60, TimeUnit.SECONDS);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            while (true) {
                boolean ready = true;
                try {
                    for (TopicDescription d : admin.describeTopics(names).allTopicNames().get(10, TimeUnit.SECONDS).values()) {
                        ready &= d.partitions().size() == partitions
                                && d.partitions().stream().allMatch(p -> p.leader() != null && !p.leader().isEmpty());
                    }
                } catch (Exception e) {
                    ready = false;
                }
                if (ready) {
                    break;
                }
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("topics not ready after 60 s: " + names);
                }
                Thread.sleep(100);
            }
            System.out.println("CREATED " + String.join(" ", names));
        }
    }

    private static void delete(Map<String, String> a) throws Exception {
        String prefix = req(a, "prefix");
        if (prefix.length() < 4) {
            throw new IllegalArgumentException("refusing a prefix shorter than 4 characters: " + prefix);
        }
        try (Admin admin = admin(a)) {
            Set<String> mine = new TreeSet<>();
            for (String t : admin.listTopics().names().get(30, TimeUnit.SECONDS)) {
                if (t.startsWith(prefix)) {
                    mine.add(t);
                }
            }
            if (!mine.isEmpty()) {
                admin.deleteTopics(mine).all().get(60, TimeUnit.SECONDS);
            }
            System.out.println("DELETED " + String.join(" ", mine));
        }
    }

    private static void watch(Map<String, String> a) throws Exception {
        long n = Long.parseLong(a.getOrDefault("n", "0"));
        long interval = Long.parseLong(a.getOrDefault("interval_ms", "10"));
        List<String> names = topics(a);
        try (Admin admin = admin(a)) {
            Map<TopicPartition, OffsetSpec> req = new HashMap<>();
            for (TopicDescription d : admin.describeTopics(names).allTopicNames().get(30, TimeUnit.SECONDS).values()) {
                for (TopicPartitionInfo p : d.partitions()) {
                    req.put(new TopicPartition(d.name(), p.partition()), OffsetSpec.latest());
                }
            }
            System.out.println("WATCHING partitions=" + req.size());
            System.out.flush();
            long last = -1;
            while (true) {
                long total = 0;
                for (ListOffsetsResult.ListOffsetsResultInfo info : admin.listOffsets(req).all().get(30, TimeUnit.SECONDS).values()) {
                    total += info.offset();
                }
                if (total != last) {
                    System.out.println("AT " + total);
                    System.out.flush();
                    last = total;
                }
                if (n > 0 && total >= n) {
                    return;
                }
                Thread.sleep(interval);
            }
        }
    }

    private static void latency(Map<String, String> a) throws Exception {
        String topic = req(a, "topic");
        long skip = Long.parseLong(a.getOrDefault("skip_ids_upto", "0"));
        Properties p = new Properties();
        p.setProperty(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, req(a, "brokers"));
        p.setProperty(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.setProperty(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "5000");
        ObjectMapper json = new ObjectMapper();
        double[] lat = new double[1 << 16];
        int count = 0;
        long records = 0;
        long tombstones = 0;
        long notAppendTime = 0;
        long dups = 0;
        long minId = Long.MAX_VALUE;
        long maxId = 0;
        BitSet seen = new BitSet();
        // per-second (by ts) maximum, to see whether latency drifts during the run
        Map<Long, Double> worstPerSecond = new HashMap<>();
        long firstTs = Long.MAX_VALUE;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = c.partitionsFor(topic, Duration.ofSeconds(30)).stream()
                    .map(i -> new TopicPartition(topic, i.partition())).collect(Collectors.toList());
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(300);
            while (parts.stream().anyMatch(tp -> c.position(tp) < end.get(tp))) {
                if (System.nanoTime() > deadline) {
                    throw new IllegalStateException("could not read " + topic + " to its end in 300 s");
                }
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(500))) {
                    records++;
                    if (r.value() == null) {
                        tombstones++;
                        continue;
                    }
                    JsonNode after = json.readTree(r.value()).get("after");
                    if (after == null || after.isNull() || !after.has("ts")) {
                        continue;
                    }
                    long id = after.get("id").asLong();
                    minId = Math.min(minId, id);
                    maxId = Math.max(maxId, id);
                    if (id < Integer.MAX_VALUE) {
                        if (seen.get((int) id)) {
                            dups++;
                        }
                        seen.set((int) id);
                    }
                    if (id <= skip) {
                        continue;
                    }
                    if (r.timestampType() != TimestampType.LOG_APPEND_TIME) {
                        notAppendTime++;
                    }
                    long tsUs = after.get("ts").asLong();
                    double l = r.timestamp() - tsUs / 1000.0;
                    if (count == lat.length) {
                        lat = Arrays.copyOf(lat, lat.length * 2);
                    }
                    lat[count++] = l;
                    firstTs = Math.min(firstTs, tsUs);
                    worstPerSecond.merge(tsUs / 1_000_000, l, Math::max);
                }
            }
        }
        double[] v = Arrays.copyOf(lat, count);
        Arrays.sort(v);
        double sum = 0;
        for (double x : v) {
            sum += x;
        }
        // the 5 worst seconds (by commit second), to tell a drift from isolated spikes
        long firstSecond = firstTs / 1_000_000;
        List<String> worst = worstPerSecond.entrySet().stream()
                .sorted((x, y) -> Double.compare(y.getValue(), x.getValue())).limit(5)
                .map(e -> String.format("\"%d\":%.1f", e.getKey() - firstSecond, e.getValue()))
                .collect(Collectors.toList());
        System.out.printf("{\"records\":%d,\"tombstones\":%d,\"n\":%d,\"distinct_ids\":%d,\"dup_ids\":%d,"
                        + "\"min_id\":%d,\"max_id\":%d,\"not_log_append_time\":%d,\"min\":%.1f,\"mean\":%.2f,"
                        + "\"p50\":%.1f,\"p90\":%.1f,\"p95\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,"
                        + "\"worst_seconds\":{%s}}%n",
                records, tombstones, count, seen.cardinality(), dups, minId == Long.MAX_VALUE ? 0 : minId, maxId,
                notAppendTime, count > 0 ? v[0] : 0, count > 0 ? sum / count : 0, pct(v, 50), pct(v, 90), pct(v, 95),
                pct(v, 99), pct(v, 99.9), count > 0 ? v[count - 1] : 0, String.join(",", worst));
    }

    /** Nearest-rank percentile of a sorted array. */
    private static double pct(double[] sorted, double q) {
        if (sorted.length == 0) {
            return 0;
        }
        int rank = (int) Math.ceil(q / 100.0 * sorted.length);
        return sorted[Math.max(0, Math.min(sorted.length - 1, rank - 1))];
    }

    private static void writer(Map<String, String> a) throws Exception {
        int rate = Integer.parseInt(a.getOrDefault("rate", "5000"));
        int rows = Integer.parseInt(a.getOrDefault("rows", "50"));
        double seconds = Double.parseDouble(a.getOrDefault("seconds", "60"));
        double warmup = Double.parseDouble(a.getOrDefault("warmup", "5"));
        String db = req(a, "db");
        String table = req(a, "table");
        long intervalNs = Math.round(rows * 1e9 / rate);
        long warmStmts = Math.round(warmup * rate / rows);
        long totalStmts = warmStmts + Math.round(seconds * rate / rows);
        String url = "jdbc:mariadb://" + a.getOrDefault("host", "127.0.0.1") + ":" + a.getOrDefault("port", "3306")
                + "/" + db;
        try (Connection conn = DriverManager.getConnection(url, req(a, "user"), a.getOrDefault("password", ""));
             Statement st = conn.createStatement()) {
            conn.setAutoCommit(true);
            long t0 = System.nanoTime();
            long maxLateNs = 0;
            long lateStmts = 0;
            long maxExecNs = 0;
            long sumExecNs = 0;
            long warmEndNs = 0;
            for (long i = 0; i < totalStmts; i++) {
                long target = t0 + i * intervalNs;
                long now;
                while ((now = System.nanoTime()) < target) {
                    LockSupport.parkNanos(target - now);
                }
                long late = now - target;
                maxLateNs = Math.max(maxLateNs, late);
                if (late > intervalNs) {
                    lateStmts++;
                }
                long first = i * rows + 1;
                long last = first + rows - 1;
                int changed = st.executeUpdate("INSERT INTO " + table + " (id, a, b, c, d, ts) SELECT seq, seq MOD 1000003, "
                        + "LEFT(REPEAT(MD5(seq), 4), 100), LEFT(REPEAT(SHA1(seq), 3), 100), NOW(3), "
                        + "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED) FROM seq_" + first + "_to_" + last);
                if (changed != rows) {
                    throw new IllegalStateException("insert changed " + changed + " rows, expected " + rows);
                }
                long exec = System.nanoTime() - now;
                maxExecNs = Math.max(maxExecNs, exec);
                sumExecNs += exec;
                if (i + 1 == warmStmts) {
                    warmEndNs = System.nanoTime();
                    System.out.println("WARM rows=" + (warmStmts * rows));
                    System.out.flush();
                }
            }
            long end = System.nanoTime();
            long measuredNs = end - (warmStmts > 0 ? warmEndNs : t0);
            long measuredRows = (totalStmts - warmStmts) * rows;
            System.out.printf("WROTE rows=%d warm_rows=%d measured_rows=%d measured_ms=%d rate=%.0f max_late_ms=%.1f "
                            + "late_stmts=%d max_exec_ms=%.1f mean_exec_ms=%.2f%n",
                    totalStmts * rows, warmStmts * rows, measuredRows, TimeUnit.NANOSECONDS.toMillis(measuredNs),
                    measuredRows * 1e9 / measuredNs, maxLateNs / 1e6, lateStmts, maxExecNs / 1e6,
                    sumExecNs / 1e6 / totalStmts);
            System.out.flush();
        }
    }

    private static void warm(Map<String, String> a) throws Exception {
        long n = Long.parseLong(a.getOrDefault("records", "500000"));
        String topic = req(a, "topic");
        // The benchmark's producer settings, with bigger batches: this only needs to be fast.
        Map<String, String> settings = new java.util.HashMap<>(a);
        settings.putIfAbsent("producer.batch.size", "262144");
        long t0 = System.nanoTime();
        try (KafkaProducer<String, String> p = DebeziumCatchup.producer(settings)) {
            StringBuilder sb = new StringBuilder();
            for (long i = 1; i <= n; i++) {
                sb.setLength(0);
                long h = i * 0x9E3779B97F4A7C15L;
                sb.append("{\"before\":null,\"after\":{\"id\":").append(i).append(",\"a\":").append(i % 1000003)
                        .append(",\"b\":\"");
                for (int k = 0; k < 6; k++) {
                    sb.append(Long.toHexString(h ^ (k * 0xC2B2AE3D27D4EB4FL)));
                }
                sb.append("\",\"c\":\"");
                for (int k = 0; k < 6; k++) {
                    sb.append(Long.toHexString(h * (k + 3)));
                }
                sb.append("\"},\"source\":{\"version\":\"warm\",\"connector\":\"mysql\",\"name\":\"warm\",")
                        .append("\"ts_ms\":").append(System.currentTimeMillis())
                        .append(",\"snapshot\":\"false\",\"db\":\"warm\",\"table\":\"t\",\"server_id\":1,")
                        .append("\"file\":\"binlog.000001\",\"pos\":").append(i * 300)
                        .append(",\"row\":0,\"thread\":null},\"op\":\"c\",\"ts_ms\":")
                        .append(System.currentTimeMillis()).append(",\"transaction\":null}");
                p.send(new ProducerRecord<>(topic, "{\"id\":" + i + "}", sb.toString()));
            }
            p.flush();
        }
        System.out.printf("WARMED records=%d ms=%d%n", n, TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0));
    }

    private static String req(Map<String, String> a, String k) {
        String v = a.get(k);
        if (v == null) {
            throw new IllegalArgumentException("missing " + k + "=...");
        }
        return v;
    }
}
