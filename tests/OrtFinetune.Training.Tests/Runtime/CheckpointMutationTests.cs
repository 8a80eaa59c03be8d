using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Runtime;

/// <summary>
/// Mutations of a valid checkpoint: every changed file must be rejected with a CheckpointException that
/// names the file (the checksum catches what the structural checks cannot), never read and never
/// another exception; an unchanged file must read back.
/// </summary>
public class CheckpointMutationTests(ITestOutputHelper log) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-ckmut-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    byte[] Seed()
    {
        var ck = new CheckpointFile();
        ck.Meta["step"] = "12";
        ck.Meta["fingerprint"] = "w:float[4,3]";
        ck.Tensors.Add(Tensor.Float("param/w", Enumerable.Range(0, 12).Select(i => (float)i).ToArray(), 4, 3));
        ck.Tensors.Add(Tensor.Float("optim/w.exp_avg", new float[12], 4, 3));
        var good = Path.Combine(_dir, "good.ckpt");
        ck.Save(good);
        Assert.Equal(Enumerable.Range(0, 12).Select(i => (float)i), CheckpointFile.Load(good).Get("param/w", good).ToFloats());
        return File.ReadAllBytes(good);
    }

    /// <summary>True when the file reads; false when it is rejected with a CheckpointException naming it.</summary>
    static bool Reads(string path, string what)
    {
        try { CheckpointFile.Load(path); return true; }
        catch (CheckpointException e) { Assert.True(e.Message.StartsWith(path, StringComparison.Ordinal), $"{what}: message does not name the file: {e.Message}"); return false; }
        catch (Exception e) { Assert.Fail($"{what} escaped: {e}"); throw; }
    }

    [Fact]
    public void EverySingleBitFlipIsRejected()
    {
        var seed = Seed();
        var path = Path.Combine(_dir, "flip.ckpt");
        for (int at = 0; at < seed.Length; at++)
            for (int bit = 0; bit < 8; bit++)
            {
                var b = (byte[])seed.Clone();
                b[at] ^= (byte)(1 << bit);
                File.WriteAllBytes(path, b);
                Assert.False(Reads(path, $"bit {bit} of byte {at}"), $"bit {bit} of byte {at} of {seed.Length} flipped: the checkpoint still reads");
            }
        log.WriteLine($"{seed.Length * 8} single-bit flips over {seed.Length} bytes: all rejected");
    }

    [Fact]
    public void MutatedCheckpointsAreRejectedCleanly()
    {
        var seed = Seed();
        var rng = new Random(77);
        int unchanged = 0, rejected = 0;
        var path = Path.Combine(_dir, "m.ckpt");
        for (int i = 0; i < 2000; i++)
        {
            var b = (byte[])seed.Clone();
            switch (rng.Next(5))
            {
                case 0: for (int k = rng.Next(1, 6); k > 0; k--) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8)); break;
                case 1: b = b[..rng.Next(b.Length)]; break;
                case 2: BitConverter.GetBytes(rng.Next(2) == 0 ? long.MaxValue - rng.Next(1000) : rng.NextInt64(-5, seed.Length * 2)).CopyTo(b, 8); break;
                case 3:
                {
                    // a run of random bytes anywhere
                    int at = rng.Next(b.Length), n = Math.Min(rng.Next(1, 17), b.Length - at);
                    rng.NextBytes(b.AsSpan(at, n));
                    break;
                }
                default:
                {
                    // change a digit inside the JSON header (offsets, lengths, shapes, dtype)
                    int at = rng.Next(16, 16 + (int)BitConverter.ToInt64(seed, 8));
                    if (b[at] is >= (byte)'0' and <= (byte)'9') b[at] = (byte)('0' + rng.Next(10)); else b[at] = (byte)"0123456789-,]}\""[rng.Next(15)];
                    break;
                }
            }
            File.WriteAllBytes(path, b);
            bool same = b.AsSpan().SequenceEqual(seed);
            bool reads = Reads(path, $"mutation {i} (seed 77)");
            Assert.True(reads == same, $"mutation {i} (seed 77): the file {(same ? "is unchanged but was rejected" : "changed but still reads")}");
            if (same) unchanged++; else rejected++;
        }
        log.WriteLine($"2000 mutations: {rejected} changed files rejected with CheckpointException, {unchanged} left the file unchanged and read");
    }
}
