using System.Buffers.Binary;
using System.Text;
using OrtFinetune.Abstractions;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using Item = OrtFinetune.Plugins.Models.SafetensorsWriter.Item;

namespace OrtFinetune.Plugins.Models.Tests;

public sealed class SafetensorsTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-st-").FullName;
    int _files;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    string Write(byte[] bytes)
    {
        var p = Path.Combine(_dir, $"w{_files++}.safetensors");
        File.WriteAllBytes(p, bytes);
        return p;
    }

    static byte[] Json(string s) => Encoding.UTF8.GetBytes(s);

    ModelException Bad(byte[] bytes, params string[] expected)
    {
        var path = Write(bytes);
        var e = Assert.Throws<ModelException>(() => SafetensorsReader.Open(path));
        log.WriteLine(e.Message);
        Assert.Contains(path, e.Message);
        foreach (var x in expected) Assert.Contains(x, e.Message);
        return e;
    }

    [Fact]
    public void ReadsAllFloatDTypesAsFloat32()
    {
        float[] v = [1.5f, -2.25f, 0f, 65504f, 3.140625f, -0.0078125f];
        var f16 = new byte[v.Length * 2]; var bf16 = new byte[v.Length * 2]; var f64 = new byte[v.Length * 8];
        for (int i = 0; i < v.Length; i++)
        {
            BinaryPrimitives.WriteHalfLittleEndian(f16.AsSpan(2 * i), (Half)v[i]);
            BinaryPrimitives.WriteUInt16LittleEndian(bf16.AsSpan(2 * i), OrtFinetune.Onnx.Tensor.BFloat16Bits(v[i]));
            BinaryPrimitives.WriteDoubleLittleEndian(f64.AsSpan(8 * i), v[i]);
        }
        var path = Write(SafetensorsWriter.Build(
        [
            new Item("a.f32", "F32", [2, 3], SafetensorsWriter.F32(v)),
            new Item("b.f16", "F16", [6], f16),
            new Item("c.bf16", "BF16", [3, 2], bf16),
            new Item("d.f64", "F64", [1, 6], f64),
            new Item("e.i64", "I64", [1], new byte[8]),
            new Item("empty", "F32", [0, 4], []),
        ], new() { ["format"] = "pt" }));
        var f = SafetensorsReader.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(6, f.Tensors.Count);
        Assert.Equal(v, f.ReadFloats("a.f32"));
        Assert.Equal(v, f.ReadFloats("d.f64"));
        Assert.Equal(v.Select(x => (float)(Half)x), f.ReadFloats("b.f16"));
        Assert.Equal(v.Select(x => OrtFinetune.Onnx.Tensor.BFloat16ToFloat(OrtFinetune.Onnx.Tensor.BFloat16Bits(x))), f.ReadFloats("c.bf16"));
        Assert.Empty(f.ReadFloats("empty"));
        Assert.Equal([3L, 2L], f.Tensors["c.bf16"].Shape);
        var e = Assert.Throws<ModelException>(() => f.ReadFloats("e.i64"));
        Assert.Contains("e.i64", e.Message);
        e = Assert.Throws<ModelException>(() => f.ReadFloats("nope"));
        Assert.Contains("nope", e.Message);
    }

    [Fact]
    public void FixtureWeightsParse()
    {
        var f = SafetensorsReader.Open(RepoPaths.Fixture("vit", "weights.safetensors"));
        Assert.Equal(32, f.Tensors.Count);
        Assert.Equal([48L, 3, 8, 8], f.Tensors["conv_proj.weight"].Shape);
        Assert.Equal("pt", f.Metadata["format"]);
    }

    [Fact] public void MissingFile() => Assert.Contains("not found", Assert.Throws<ModelException>(() => SafetensorsReader.Open(Path.Combine(_dir, "none.safetensors"))).Message);
    [Fact] public void ShorterThanLengthField() => Bad([1, 2, 3], "8-byte");
    [Fact] public void HeaderLengthPastEndOfFile() => Bad(SafetensorsWriter.Assemble(Json("{}"), [])[..8].Concat(Json("{}")).ToArray().Also(b => b[0] = 200), "header length 200");
    [Fact] public void HugeHeaderLength() => Bad(new byte[] { 255, 255, 255, 255, 255, 255, 255, 255, (byte)'{', (byte)'}' }, "header length");
    [Fact] public void HeaderLengthTooSmall() => Bad(SafetensorsWriter.Assemble(Json("{"), []), "too small");
    [Fact] public void BadJson() => Bad(SafetensorsWriter.Assemble(Json("{\"a\": {\"dtype\": \"F32\", "), []), "JSON");
    [Fact] public void NotUtf8() => Bad(SafetensorsWriter.Assemble([(byte)'{', 0xff, 0xfe, (byte)'}'], []), "UTF-8");
    [Fact] public void HeaderNotAnObject() => Bad(SafetensorsWriter.Assemble(Json("[1, 2]"), []), "'{'");
    [Fact] public void UnknownDType() => Bad(SafetensorsWriter.Build([new Item("w", "Q4", [2], new byte[2])]), "'w'", "unknown dtype 'Q4'");
    [Fact] public void WrongSize() => Bad(SafetensorsWriter.Build([new Item("w", "F32", [2, 3], new byte[20])]), "'w'", "needs 24 bytes", "hold 20");
    [Fact] public void HugeShape() => Bad(SafetensorsWriter.Build([new Item("w", "F32", [1L << 40, 1L << 40, 1L << 40], new byte[4])]), "'w'", "more than 4");
    [Fact] public void NegativeDim() => Bad(SafetensorsWriter.Assemble(Json("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}"), new byte[4]), "'w'", "non-negative");
    [Fact] public void MissingField() => Bad(SafetensorsWriter.Assemble(Json("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}"), new byte[4]), "'w'", "data_offsets");
    [Fact] public void OffsetsOutOfRange() => Bad(SafetensorsWriter.Assemble(Json("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"), new byte[4]), "'w'", "past the 4-byte data section");
    [Fact] public void OffsetsReversed() => Bad(SafetensorsWriter.Assemble(Json("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}"), new byte[4]), "'w'", "end before");
    [Fact] public void OverlappingOffsets() => Bad(SafetensorsWriter.Assemble(Json(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}"), new byte[12]), "'b'", "overlaps", "'a'");
    [Fact] public void HoleBetweenTensors() => Bad(SafetensorsWriter.Assemble(Json(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}"), new byte[12]), "'b'", "holes");
    [Fact] public void TrailingBytes() => Bad(SafetensorsWriter.Assemble(Json("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"), new byte[9]), "cover 4 bytes", "has 9");
    [Fact] public void DuplicateTensor() => Bad(SafetensorsWriter.Assemble(Json(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}"), new byte[8]), "'a'", "twice");
    [Fact] public void MetadataNotStrings() => Bad(SafetensorsWriter.Assemble(Json("{\"__metadata__\":{\"x\":1}}"), []), "__metadata__");

    /// <summary>
    /// Seeded random mutations of a valid file (byte flips, header text edits, truncation, length-field
    /// changes): every outcome is a successful read of every tensor or a ModelException naming the file.
    /// </summary>
    [Fact]
    public void MutationsGiveReadsOrModelExceptions()
    {
        var rng = new Random(20240611);
        var valid = SafetensorsWriter.Build(
        [
            new Item("w", "F32", [2, 3], SafetensorsWriter.F32(1, 2, 3, 4, 5, 6)),
            new Item("h", "F16", [4], new byte[8]),
            new Item("b", "BF16", [2], new byte[4]),
            new Item("d", "F64", [1], new byte[8]),
        ], new() { ["format"] = "pt" });
        int headerLen = (int)BinaryPrimitives.ReadUInt64LittleEndian(valid);
        string[] snippets = ["0", "9", "-1", "99999999999999999999", "1e3", "\"", "}", "{", "[", "]", ",", "null", "\"F32\"", "\"BF16\"", "\"X\"", "4294967296", "18446744073709551615", "9007199254740993"];
        int ok = 0, rejected = 0;
        for (int iter = 0; iter < 600; iter++)
        {
            var bytes = (byte[])valid.Clone();
            int kind = rng.Next(5);
            switch (kind)
            {
                case 0: // flip random bytes in the header (or length field)
                    for (int k = rng.Next(1, 4); k > 0; k--) bytes[rng.Next(0, 8 + headerLen)] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1: // replace a digit/character run in the JSON text with a snippet
                {
                    var text = Encoding.UTF8.GetString(bytes, 8, headerLen);
                    int at = rng.Next(text.Length), len = rng.Next(0, 4);
                    len = Math.Min(len, text.Length - at);
                    text = text.Remove(at, len).Insert(at, snippets[rng.Next(snippets.Length)]);
                    var h = Encoding.UTF8.GetBytes(text);
                    bytes = SafetensorsWriter.Assemble(h, valid[(8 + headerLen)..]);
                    break;
                }
                case 2: // truncate or extend the file
                    bytes = rng.Next(2) == 0 ? bytes[..rng.Next(bytes.Length)] : bytes.Concat(new byte[rng.Next(1, 16)]).ToArray();
                    break;
                case 3: // random length field
                    BinaryPrimitives.WriteUInt64LittleEndian(bytes, rng.Next(3) switch { 0 => (ulong)rng.Next(0, bytes.Length + 8), 1 => ulong.MaxValue - (ulong)rng.Next(100), _ => (ulong)rng.NextInt64() });
                    break;
                default: // random garbage of the same size after the length field
                    rng.NextBytes(bytes.AsSpan(8, rng.Next(1, headerLen)));
                    break;
            }
            var path = Write(bytes);
            try
            {
                var f = SafetensorsReader.Open(path);
                foreach (var e in f.Tensors.Values)
                    if (SafetensorsReader.IsFloat(e.DType)) Assert.Equal(e.ElementCount, f.ReadFloats(e.Name).Length);
                ok++;
            }
            catch (ModelException e)
            {
                Assert.Contains(path, e.Message);
                rejected++;
            }
            File.Delete(path);
        }
        log.WriteLine($"600 mutations: {ok} read, {rejected} rejected with ModelException");
        Assert.True(rejected > 300, $"only {rejected} rejected");
    }
}

static class ByteArrayExtensions
{
    public static byte[] Also(this byte[] b, Action<byte[]> f) { f(b); return b; }
}
