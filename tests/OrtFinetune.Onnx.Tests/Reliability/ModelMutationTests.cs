using OrtFinetune.Onnx;
using Xunit.Abstractions;

namespace OrtFinetune.Onnx.Tests.Reliability;

/// <summary>
/// Seeded mutations of valid ONNX files (bit flips, truncations, length-field changes, byte runs):
/// every outcome is a correct read or an <see cref="OnnxFormatException"/>, never another exception.
/// </summary>
public class ModelMutationTests(ITestOutputHelper log)
{
    static string Fixture(string name)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "OrtFinetune.slnx"))) return Path.Combine(d.FullName, "tests", "fixtures", "autodiff", name, "model.onnx");
        throw new InvalidOperationException("repository root not found");
    }

    public static byte[] Mutate(byte[] seed, Random rng)
    {
        var b = (byte[])seed.Clone();
        switch (rng.Next(5))
        {
            case 0: // bit flips
                for (int k = rng.Next(1, 8); k > 0; k--) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8));
                return b;
            case 1: // truncation
                return b[..rng.Next(b.Length)];
            case 2: // a varint length field made huge or small
            {
                int at = rng.Next(b.Length - 5);
                var big = new byte[] { 0xff, 0xff, 0xff, 0xff, 0x07 };
                if (rng.Next(2) == 0) Array.Copy(big, 0, b, at, 5); else b[at] = (byte)rng.Next(128);
                return b;
            }
            case 3: // a run of random bytes
            {
                int at = rng.Next(b.Length), len = Math.Min(rng.Next(1, 64), b.Length - at);
                for (int i = 0; i < len; i++) b[at + i] = (byte)rng.Next(256);
                return b;
            }
            default: // duplicated slice (repeated fields, shifted structure)
            {
                int at = rng.Next(b.Length), len = Math.Min(rng.Next(1, 256), b.Length - at);
                return [.. b[..at], .. b.AsSpan(at, len).ToArray(), .. b[at..]];
            }
        }
    }

    [Theory]
    [InlineData("mlp", 1500)]
    [InlineData("resnet_small", 1000)]
    public void MutatedModelsReadOrFailCleanly(string name, int count)
    {
        var seed = File.ReadAllBytes(Fixture(name));
        var rng = new Random(20261129);
        int ok = 0, rejected = 0;
        for (int i = 0; i < count; i++)
        {
            var bytes = Mutate(seed, rng);
            try
            {
                var m = ModelIO.FromBytes(bytes);
                ShapeInference.Infer(m);
                ok++;
            }
            catch (OnnxFormatException) { rejected++; }
            catch (Exception e)
            {
                var path = Path.Combine(Path.GetTempPath(), $"mutant-{name}-{i}.onnx");
                File.WriteAllBytes(path, bytes);
                Assert.Fail($"mutation {i} (seed 20261129) escaped: {e}; saved to {path}");
            }
        }
        log.WriteLine($"{name}: {count} mutations, {ok} read, {rejected} rejected with OnnxFormatException");
    }
}
