using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OrtFinetune.Host.Logging;
using Xunit.Abstractions;

namespace OrtFinetune.Host.Tests;

/// <summary>
/// The run folder's loggers (issue 14, part 4): TensorBoard event files, metrics.csv and curves.png, checked
/// against metrics.jsonl. The event files are read with <see cref="TfEvents"/>, a reader written here from
/// the format's specification (TFRecord framing, CRC-32C computed bit by bit, protobuf wire format decoded by
/// hand), independent of the generated classes and of System.IO.Hashing that the writer uses.
/// </summary>
public class LoggerTests(ITestOutputHelper log) : IDisposable
{
    readonly string _tmp = Directory.CreateTempSubdirectory("ortfinetune-log-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_tmp, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    // ---- the real executable ----

    [Fact]
    public void TrainWritesEventFilesCsvAndCurvesThatAgreeWithMetricsJsonl()
    {
        // 16-mixed so that the loss scale is logged too (on the CPU it computes in fp32, with the scaler active).
        var run = Path.Combine(_tmp, "run");
        string[] args = [TestPaths.HostDll, "train", "--dataset", "shapes", "--model", "vit-tiny", "--image-size", "16", "--limit", "256",
            "--batch-size", "32", "--log-every", "1", "--epochs", "1", "--precision", "16-mixed", "--output", run, "--plugins-dir", TestPaths.BuiltInPlugins];
        var psi = new ProcessStartInfo("dotnet", args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = _tmp };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(180))) { p.Kill(true); Assert.Fail("train ran past 180 s"); }
        p.WaitForExit();
        log.WriteLine(stdout.Result);
        Assert.True(p.ExitCode == 0, stderr.Result);

        var records = File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.Equal(8 + 1 + 1, records.Count);   // 8 steps, the validation, the test
        foreach (var key in (string[])["loss", "lr", "grad_norm", "samples_per_second", "loss_scale"]) Assert.Contains(records, r => Num(r, key) != null);
        foreach (var key in (string[])["val_loss", "val_accuracy", "test_loss", "test_accuracy"]) Assert.Single(records, r => Num(r, key) != null);
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(run, "summary.json")))!;
        Assert.Equal((double?)summary["test_accuracy"]!.GetValue<double>(), Num(records[^1], "test_accuracy"));

        // TensorBoard: one file under tb/, every scalar of metrics.jsonl in it, in order, with its step.
        var files = Directory.GetFiles(Path.Combine(run, "tb"));
        Assert.Single(files);
        Assert.Matches(@"^events\.out\.tfevents\.\d{10}\.", Path.GetFileName(files[0]));
        int scalars = AssertEventsMatch(TfEvents.Read(files[0]), records);
        log.WriteLine($"{scalars} scalars in {Path.GetFileName(files[0])} match metrics.jsonl");

        AssertCsvMatches(File.ReadAllText(Path.Combine(run, "metrics.csv")), records);

        var png = Path.Combine(run, "curves.png");
        Assert.Contains($"curves: {png}", stdout.Result);
        AssertPng(png, 1000, 600);
    }

    // ---- the loggers driven directly ----

    static readonly JsonObject[] Known =
    [
        new() { ["step"] = 1, ["epoch"] = 1, ["loss"] = 2.25, ["lr"] = 1e-5, ["grad_norm"] = 0.5 },
        new() { ["step"] = 2, ["epoch"] = 1, ["loss"] = null, ["lr"] = 2e-5, ["grad_norm"] = 3.0000001192092896 },   // a diverged loss
        new() { ["step"] = 2, ["epoch"] = 1, ["val_loss"] = 1.75, ["val_accuracy"] = 0.375 },                       // new columns: a rewrite
        new() { ["step"] = 4_000_000_000L, ["epoch"] = 2, ["loss"] = -0.125, ["lr"] = 0, ["loss_scale"] = 65536f },
        new() { ["step"] = 4_000_000_000L, ["epoch"] = 2, ["test_accuracy"] = 0.9, ["note"] = "a, \"quoted\" cell" },
    ];

    [Fact]
    public void TensorBoardLoggerWritesEveryNumberAsAScalarEvent()
    {
        var dir = Path.Combine(_tmp, "tb");
        double t = 1_700_000_000.25;
        string file;
        using (var tb = new TensorBoardLogger(dir, () => t += 1))
        {
            file = tb.FilePath;
            foreach (var r in Known) tb.Log(r);
        }
        Assert.Equal(dir, Path.GetDirectoryName(file));
        var events = TfEvents.Read(file);
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        Assert.Equal(1_700_000_001.25, events[0].WallTime);
        int n = AssertEventsMatch(events, Known);
        Assert.Equal(16, n);   // 4 + 3 + 3 + 4 + 2: the null loss and the string are not scalars
        Assert.All(events.Skip(1), e => Assert.True(e.WallTime > 1_700_000_001.25));
        Assert.Contains(events, e => e.Step == 4_000_000_000L && e.Tag == "loss" && e.Value == -0.125f);

        // A second logger in the same folder (a resumed run) adds a file beside the first.
        using (var again = new TensorBoardLogger(dir)) Assert.NotEqual(file, again.FilePath);
        Assert.Equal(2, Directory.GetFiles(dir).Length);
    }

    [Fact]
    public void TfEventsReaderRejectsACorruptRecord()
    {
        Assert.Equal(0xE3069283u, TfEvents.Crc32C(Encoding.ASCII.GetBytes("123456789")));   // the CRC-32C check value
        var dir = Path.Combine(_tmp, "bad");
        string file;
        using (var tb = new TensorBoardLogger(dir)) { file = tb.FilePath; tb.Log(Known[0]); }
        var bytes = File.ReadAllBytes(file);
        bytes[^6] ^= 1;   // inside the last record's data
        File.WriteAllBytes(file, bytes);
        Assert.Throws<InvalidDataException>(() => TfEvents.Read(file));
    }

    [Fact]
    public void CsvLoggerUsesLightningsLayoutAndKeepsItsRowsOnResume()
    {
        var path = Path.Combine(_tmp, "metrics.csv");
        using (var csv = new CsvMetricsLogger(path, append: false))
            foreach (var r in Known.Take(3)) csv.Log(r);
        var text = File.ReadAllText(path);
        Assert.Equal("step,epoch,loss,lr,grad_norm,val_loss,val_accuracy\r\n1,1,2.25,1E-05,0.5,,\r\n2,1,,2E-05,3.0000001192092896,,\r\n2,1,,,,1.75,0.375\r\n", text);
        AssertCsvMatches(text, Known.Take(3).ToList());

        // A resumed run: the rows so far stay, new keys widen the header of the whole file.
        using (var csv = new CsvMetricsLogger(path, append: true))
            foreach (var r in Known.Skip(3)) csv.Log(r);
        text = File.ReadAllText(path);
        AssertCsvMatches(text, Known.ToList());
        Assert.EndsWith(",\"a, \"\"quoted\"\" cell\"\r\n", text);
        Assert.False(File.Exists(path + ".tmp"));

        // Not resumed: a new file.
        using (var csv = new CsvMetricsLogger(path, append: false)) csv.Log(Known[0]);
        Assert.Equal(2, File.ReadAllLines(path).Length);
    }

    // ---- checks ----

    static double? Num(JsonObject r, string key) =>
        r[key] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture) : null;

    /// <summary>The events after file_version are exactly the numeric values of <paramref name="records"/> (step excluded), in order.</summary>
    static int AssertEventsMatch(IReadOnlyList<TfEvents.Event> events, IReadOnlyList<JsonObject> records)
    {
        Assert.Equal("brain.Event:2", events[0].FileVersion);
        Assert.Null(events[0].Tag);
        var expected = new List<(long Step, string Tag, float Value)>();
        foreach (var r in records)
            foreach (var (k, _) in r)
                if (k != "step" && Num(r, k) is { } v) expected.Add(((long)Num(r, "step")!.Value, k, (float)v));
        var actual = events.Skip(1).Select(e =>
        {
            Assert.Null(e.FileVersion);
            Assert.NotNull(e.Tag);
            Assert.True(e.WallTime > 1.6e9, $"wall_time {e.WallTime}");
            return (e.Step, e.Tag!, e.Value!.Value);
        }).ToList();
        Assert.Equal(expected, actual);
        return actual.Count;
    }

    /// <summary>
    /// Lightning's CSVLogger layout: a header of the keys with a value (first-seen order), one row per record
    /// with each cell the record's value as written in metrics.jsonl, empty where the record has none; CRLF.
    /// </summary>
    static void AssertCsvMatches(string text, IReadOnlyList<JsonObject> records)
    {
        Assert.EndsWith("\r\n", text);
        var lines = ParseCsv(text);
        var header = records.SelectMany(r => r.Where(kv => kv.Value != null).Select(kv => kv.Key)).Distinct().ToList();
        Assert.Equal(header, lines[0]);
        Assert.Equal(records.Count, lines.Count - 1);
        for (int i = 0; i < records.Count; i++)
        {
            Assert.Equal(header.Count, lines[i + 1].Count);
            for (int c = 0; c < header.Count; c++)
            {
                var node = records[i][header[c]];
                var want = node == null ? "" : node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : node.ToJsonString();
                Assert.True(want == lines[i + 1][c], $"row {i + 1}, column {header[c]}: '{lines[i + 1][c]}', expected '{want}'");
            }
        }
    }

    /// <summary>RFC 4180, written here for the test: CRLF records, quoted cells with doubled quotes.</summary>
    static List<List<string>> ParseCsv(string text)
    {
        var rows = new List<List<string>>();
        var row = new List<string>();
        var cell = new StringBuilder();
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '"')
            {
                for (i++; ; i++)
                {
                    if (text[i] == '"' && i + 1 < text.Length && text[i + 1] == '"') { cell.Append('"'); i++; }
                    else if (text[i] == '"') break;
                    else cell.Append(text[i]);
                }
            }
            else if (c == ',') { row.Add(cell.ToString()); cell.Clear(); }
            else if (c == '\r' && i + 1 < text.Length && text[i + 1] == '\n') { row.Add(cell.ToString()); cell.Clear(); rows.Add(row); row = new(); i++; }
            else cell.Append(c);
        }
        Assert.True(row.Count == 0 && cell.Length == 0, "the last record has no CRLF");
        return rows;
    }

    /// <summary>A PNG: the signature, an IHDR of the expected size first, an IEND last, every chunk's CRC-32 right, and non-trivial size.</summary>
    static void AssertPng(string path, int width, int height)
    {
        Assert.True(File.Exists(path), path);
        var b = File.ReadAllBytes(path);
        Assert.True(b.Length > 10_000, $"{path} is only {b.Length} bytes");
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, b[..8]);
        int at = 8;
        var types = new List<string>();
        while (at < b.Length)
        {
            int len = (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at));
            var type = Encoding.ASCII.GetString(b, at + 4, 4);
            uint crc = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at + 8 + len));
            Assert.Equal(crc, Crc32Png(b.AsSpan(at + 4, 4 + len)));
            if (type == "IHDR")
            {
                Assert.Equal(width, (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at + 8)));
                Assert.Equal(height, (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at + 12)));
            }
            types.Add(type);
            at += 12 + len;
        }
        Assert.Equal(b.Length, at);
        Assert.Equal("IHDR", types[0]);
        Assert.Equal("IEND", types[^1]);
        Assert.Contains("IDAT", types);
    }

    static uint Crc32Png(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (var x in data)
        {
            crc ^= x;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320 : crc >> 1;
        }
        return ~crc;
    }
}

/// <summary>
/// A reader of TensorBoard event files written from the formats' specifications, for the tests:
/// TFRecord (uint64 length, uint32 masked CRC-32C of the length, data, uint32 masked CRC-32C of the data;
/// little-endian; mask = rotate right 15 + 0xa282ead8), CRC-32C bit by bit (reflected polynomial
/// 0x82F63B78), and the protobuf wire format (varint, 64-bit, length-delimited, 32-bit) decoding
/// Event {1: double wall_time, 2: int64 step, 3: string file_version, 5: Summary summary} and
/// Summary {1: repeated Value value}, Value {1: string tag, 2: float simple_value}.
/// </summary>
public static class TfEvents
{
    /// <summary>One event; a summary event has exactly one value here (the writer writes one scalar per event).</summary>
    public sealed record Event(double WallTime, long Step, string? FileVersion, string? Tag, float? Value);

    public static List<Event> Read(string path)
    {
        var b = File.ReadAllBytes(path);
        var events = new List<Event>();
        int at = 0;
        while (at < b.Length)
        {
            if (b.Length - at < 12) throw new InvalidDataException($"truncated header at {at}");
            ulong len = BitConverter.ToUInt64(b, at);
            if (BitConverter.ToUInt32(b, at + 8) != Masked(Crc32C(b.AsSpan(at, 8)))) throw new InvalidDataException($"length CRC mismatch at {at}");
            if ((ulong)(b.Length - at - 16) < len) throw new InvalidDataException($"truncated record at {at}");
            var data = b.AsSpan(at + 12, (int)len);
            if (BitConverter.ToUInt32(b, at + 12 + (int)len) != Masked(Crc32C(data))) throw new InvalidDataException($"data CRC mismatch at {at}");
            events.Add(DecodeEvent(data.ToArray()));
            at += 16 + (int)len;
        }
        return events;
    }

    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (var x in data)
        {
            crc ^= x;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78 : crc >> 1;
        }
        return ~crc;
    }

    static uint Masked(uint crc) => unchecked(((crc >> 15) | (crc << 17)) + 0xa282ead8);

    static Event DecodeEvent(byte[] m)
    {
        double wall = 0; long step = 0; string? version = null, tag = null; float? value = null; int values = 0;
        foreach (var f in Fields(m))
        {
            switch (f.Number, f.WireType)
            {
                case (1, 1): wall = BitConverter.Int64BitsToDouble((long)f.Scalar); break;
                case (2, 0): step = (long)f.Scalar; break;
                case (3, 2): version = Encoding.UTF8.GetString(f.Bytes!); break;
                case (5, 2):
                    foreach (var sv in Fields(f.Bytes!))
                    {
                        if (sv is not { Number: 1, WireType: 2 }) throw new InvalidDataException($"unexpected Summary field {sv.Number}");
                        values++;
                        foreach (var v in Fields(sv.Bytes!))
                        {
                            if (v is { Number: 1, WireType: 2 }) tag = Encoding.UTF8.GetString(v.Bytes!);
                            else if (v is { Number: 2, WireType: 5 }) value = BitConverter.Int32BitsToSingle((int)(uint)v.Scalar);
                            else throw new InvalidDataException($"unexpected Summary.Value field {v.Number} (wire type {v.WireType})");
                        }
                    }
                    break;
                default: throw new InvalidDataException($"unexpected Event field {f.Number} (wire type {f.WireType})");
            }
        }
        if (values > 1) throw new InvalidDataException("more than one value in a summary");
        return new Event(wall, step, version, tag, value);
    }

    record struct Field(int Number, int WireType, ulong Scalar, byte[]? Bytes);

    static IEnumerable<Field> Fields(byte[] m)
    {
        int at = 0;
        while (at < m.Length)
        {
            ulong key = Varint(m, ref at);
            int number = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: yield return new Field(number, wire, Varint(m, ref at), null); break;
                case 1: yield return new Field(number, wire, BitConverter.ToUInt64(m, at), null); at += 8; break;
                case 2:
                    int len = checked((int)Varint(m, ref at));
                    if (at + len > m.Length) throw new InvalidDataException("length-delimited field past the message");
                    yield return new Field(number, wire, 0, m[at..(at + len)]); at += len; break;
                case 5: yield return new Field(number, wire, BitConverter.ToUInt32(m, at), null); at += 4; break;
                default: throw new InvalidDataException($"wire type {wire}");
            }
        }
    }

    static ulong Varint(byte[] m, ref int at)
    {
        ulong v = 0;
        for (int shift = 0; ; shift += 7)
        {
            if (shift > 63 || at >= m.Length) throw new InvalidDataException("bad varint");
            byte x = m[at++];
            v |= (ulong)(x & 0x7F) << shift;
            if (x < 0x80) return v;
        }
    }
}
