// One rank of a distributed-layer check, run by OrtFinetune.Distributed.Tests (or by hand):
//
//   dotnet build tests/OrtFinetune.Distributed.Probe -c Release
//   mpirun -n 2 --allow-run-as-root --bind-to none \
//       dotnet tests/OrtFinetune.Distributed.Probe/bin/Release/net10.0/OrtFinetune.Distributed.Probe.dll rank-sum
//
// Scenarios: rank-sum, broadcast, die-exit, die-crash, abort. Every rank prints "rank R: <scenario> ok ..."
// when its checks pass and exits 0; a failed check prints "rank R: FAIL ..." and exits 1.
using System.Runtime.InteropServices;
using OrtFinetune.Distributed;
using OrtFinetune.Onnx;

var scenario = args.Length > 0 ? args[0] : "rank-sum";
using var comm = Communicator.FromEnvironment();
if (comm == null)
{
    Console.WriteLine("not launched as one of several ranks (run under mpirun -n 2 or more)");
    return 2;
}
var probe = new Probe(comm);
try
{
    switch (scenario)
    {
        case "rank-sum": probe.RankSum(); break;
        case "broadcast": probe.Broadcast(); break;
        case "die-exit": probe.DieExit(); break;
        case "die-crash": probe.DieCrash(); break;
        case "abort": probe.Abort(); break;
        default: Console.WriteLine($"unknown scenario {scenario}"); return 2;
    }
}
catch (ProbeFailure e)
{
    probe.Say($"FAIL {e.Message}");
    return 1;
}
return 0;

sealed class ProbeFailure(string message) : Exception(message);

sealed unsafe class Probe(Communicator comm)
{
    // Not a multiple of anything nice, and larger than the chunk the chunked pass uses.
    const int N = 4099;
    int Rank => comm.Rank;
    int Size => comm.Size;

    public void Say(string line)
    {
        Console.WriteLine($"rank {Rank}: {line}");
        Console.Out.Flush();
    }

    static void Expect(bool ok, string what)
    {
        if (!ok) throw new ProbeFailure(what);
    }

    /// <summary>Each rank contributes (r+1)*(i%7+1) at element i; every rank must get n(n+1)/2*(i%7+1).</summary>
    public void RankSum()
    {
        // .NET turns SIGSEGV into NullReferenceException; MPI_Init must not have taken the signal over.
        try { object? nothing = null; _ = nothing!.GetHashCode(); Expect(false, "no NullReferenceException"); }
        catch (NullReferenceException) { }

        // One node: the launcher's local rank, MPI's own count of the ranks sharing this node, and the rank agree.
        int nodeRank = comm.NodeRank();
        Expect(comm.LocalRank == Rank && nodeRank == Rank, $"local rank {comm.LocalRank}, node rank {nodeRank}, rank {Rank}");

        long total = (long)Size * (Size + 1) / 2;
        foreach (var chunk in new[] { int.MaxValue, 1000 })
        {
            comm.ChunkElements = chunk;
            var f32 = new float[N]; var f64 = new double[N]; var i64 = new long[N];
            var f16 = new Half[N]; var b16 = new ushort[N];
            for (int i = 0; i < N; i++)
            {
                int v = (Rank + 1) * (i % 7 + 1);
                f32[i] = v; f64[i] = v; i64[i] = v; f16[i] = (Half)v; b16[i] = Bf16(v);
            }
            fixed (float* p = f32) comm.AllReduceSum((IntPtr)p, N, DataType.Float);
            fixed (double* p = f64) comm.AllReduceSum((IntPtr)p, N, DataType.Double);
            fixed (long* p = i64) comm.AllReduceSum((IntPtr)p, N, DataType.Int64);
            fixed (Half* p = f16) comm.AllReduceSum((IntPtr)p, N, DataType.Float16);
            fixed (ushort* p = b16) comm.AllReduceSum((IntPtr)p, N, DataType.BFloat16);
            for (int i = 0; i < N; i++)
            {
                long want = total * (i % 7 + 1);
                Expect(f32[i] == want, $"fp32[{i}] = {f32[i]}, want {want} (chunk {chunk})");
                Expect(f64[i] == want, $"fp64[{i}] = {f64[i]}, want {want} (chunk {chunk})");
                Expect(i64[i] == want, $"int64[{i}] = {i64[i]}, want {want} (chunk {chunk})");
                Expect((float)f16[i] == want, $"fp16[{i}] = {f16[i]}, want {want} (chunk {chunk})");
                Expect(FromBf16(b16[i]) == want, $"bf16[{i}] = {FromBf16(b16[i])}, want {want} (chunk {chunk})");
            }
        }
        comm.ChunkElements = int.MaxValue;

        // The mean as DDP computes it (divide by the world size, then sum): (n + 1) / 2 * (i % 7 + 1) in every type;
        // fp16's 60000 + 60000 overflows as a sum, not as a mean.
        {
            var f32 = new float[N]; var f64 = new double[N]; var f16 = new Half[N]; var b16 = new ushort[N];
            for (int i = 0; i < N; i++)
            {
                int v = (Rank + 1) * (i % 7 + 1);
                f32[i] = v; f64[i] = v; f16[i] = (Half)v; b16[i] = Bf16(v);
            }
            f16[3] = (Half)60000;
            fixed (float* p = f32) comm.AllReduceMean((IntPtr)p, N, DataType.Float);
            fixed (double* p = f64) comm.AllReduceMean((IntPtr)p, N, DataType.Double);
            fixed (Half* p = f16) comm.AllReduceMean((IntPtr)p, N, DataType.Float16);
            fixed (ushort* p = b16) comm.AllReduceMean((IntPtr)p, N, DataType.BFloat16);
            for (int i = 0; i < N; i++)
            {
                double want = (Size + 1) / 2.0 * (i % 7 + 1);
                Expect(Math.Abs(f32[i] - want) <= 1e-6 * want, $"mean fp32[{i}] = {f32[i]}, want {want}");
                Expect(f64[i] == want || Math.Abs(f64[i] - want) <= 1e-12 * want, $"mean fp64[{i}] = {f64[i]}, want {want}");
                if (i != 3) Expect(Math.Abs((float)f16[i] - want) <= 2e-3 * want, $"mean fp16[{i}] = {f16[i]}, want {want}");
                Expect(Math.Abs(FromBf16(b16[i]) - want) <= 1e-2 * want, $"mean bf16[{i}] = {FromBf16(b16[i])}, want {want}");
            }
            Expect(Math.Abs((float)f16[3] - 60000) <= 60000 * 2e-3, $"mean fp16[3] = {f16[3]}, want 60000 (no overflow)");
        }

        Span<double> d = [Rank + 0.5, 1.0];
        comm.AllReduceSum(d);
        Expect(d[0] == total - Size + 0.5 * Size && d[1] == Size, $"Span<double> sum {d[0]}, {d[1]}");
        Span<long> l = [Rank, 1L << 40];
        comm.AllReduceSum(l);
        Expect(l[0] == total - Size && l[1] == Size * (1L << 40), $"Span<long> sum {l[0]}, {l[1]}");
        Expect(comm.AllReduceMax(Rank) == Size - 1, "AllReduceMax");
        Expect(comm.AllReduceMin(Rank) == 0, "AllReduceMin");

        NonFinite();
        Say($"rank-sum ok, {Size} ranks, sum {total}; {comm.Description}");
    }

    /// <summary>The last rank puts NaN at 5 and inf at 17; fp16 values past the range overflow at 33.
    /// Every rank must see non-finite values exactly there, and correct finite sums elsewhere.</summary>
    void NonFinite()
    {
        bool last = Rank == Size - 1;
        var f32 = new float[N]; var f16 = new Half[N]; var b16 = new ushort[N];
        for (int i = 0; i < N; i++) { f32[i] = 1; f16[i] = (Half)1; b16[i] = Bf16(1); }
        if (last)
        {
            f32[5] = float.NaN; f16[5] = Half.NaN; b16[5] = 0x7FC0;
            f32[17] = float.PositiveInfinity; f16[17] = Half.PositiveInfinity; b16[17] = 0x7F80;
            f32[4000] = float.NegativeInfinity; f16[4000] = Half.NegativeInfinity; b16[4000] = 0xFF80;
        }
        f16[33] = (Half)60000;   // the sum of two passes fp16's largest, 65504
        fixed (float* p = f32) comm.AllReduceSum((IntPtr)p, N, DataType.Float);
        fixed (Half* p = f16) comm.AllReduceSum((IntPtr)p, N, DataType.Float16);
        fixed (ushort* p = b16) comm.AllReduceSum((IntPtr)p, N, DataType.BFloat16);
        for (int i = 0; i < N; i++)
        {
            bool bad = i is 5 or 17 or 4000;
            Expect(float.IsFinite(f32[i]) != bad, $"fp32[{i}] = {f32[i]}");
            Expect(Half.IsFinite(f16[i]) != (bad || i == 33), $"fp16[{i}] = {f16[i]}");
            Expect(float.IsFinite(FromBf16(b16[i])) != bad, $"bf16[{i}] = {FromBf16(b16[i])}");
            if (!bad && i != 33)
                Expect(f32[i] == Size && (float)f16[i] == Size && FromBf16(b16[i]) == Size, $"finite sum at {i}");
        }
        Expect(float.IsNaN(f32[5]) && Half.IsNaN(f16[5]) && float.IsNaN(FromBf16(b16[5])), "NaN stays NaN");
        Expect(float.IsPositiveInfinity(f32[17]) && Half.IsPositiveInfinity(f16[17]) && float.IsPositiveInfinity(FromBf16(b16[17])), "+inf stays +inf");
        Expect(Half.IsPositiveInfinity(f16[33]), "fp16 overflow gives +inf");
        Say("non-finite ok: NaN and inf reach every rank in fp32, fp16 and bf16");
    }

    /// <summary>Rank 0's bytes reach every rank, whole and in chunks; then the last rank's.</summary>
    public void Broadcast()
    {
        foreach (var (chunk, root) in new[] { (int.MaxValue, 0), (4096, 0), (int.MaxValue, Size - 1) })
        {
            comm.ChunkElements = chunk;
            var bytes = new byte[100_003];
            if (Rank == root) for (int i = 0; i < bytes.Length; i++) bytes[i] = Pattern(i, root);
            comm.Broadcast(bytes, root);
            for (int i = 0; i < bytes.Length; i++)
                Expect(bytes[i] == Pattern(i, root), $"byte {i} = {bytes[i]} from root {root} (chunk {chunk})");
        }
        comm.ChunkElements = int.MaxValue;
        comm.Barrier();
        Say($"broadcast ok, {Size} ranks; {comm.Description}");
    }

    static byte Pattern(int i, int root) => (byte)(i * 31 + 7 + root * 101);

    /// <summary>Rank 1 exits with code 3 while rank 0 waits in an allreduce: mpirun must end the job.</summary>
    public void DieExit()
    {
        comm.Barrier();
        if (Rank == 1)
        {
            Thread.Sleep(300);
            Say("exiting with code 3");
            Environment.Exit(3);
        }
        Say("waiting in allreduce");
        var data = new double[1000];
        comm.AllReduceSum(data);
        Say("UNEXPECTED: allreduce returned");
    }

    /// <summary>Rank 1 dies of an unhandled exception while rank 0 waits in a barrier.</summary>
    public void DieCrash()
    {
        comm.Barrier();
        if (Rank == 1)
        {
            Thread.Sleep(300);
            Say("throwing");
            throw new InvalidOperationException("probe: deliberate crash on rank 1");
        }
        Say("waiting in barrier");
        comm.Barrier();
        Say("UNEXPECTED: barrier returned");
    }

    /// <summary>Rank 1 calls Abort(5) while rank 0 waits in a barrier.</summary>
    public void Abort()
    {
        comm.Barrier();
        if (Rank == 1)
        {
            Thread.Sleep(300);
            Say("aborting with code 5");
            comm.Abort(5);
        }
        Say("waiting in barrier");
        comm.Barrier();
        Say("UNEXPECTED: barrier returned");
    }

    // bf16 helpers written independently of the library's (small integers are exact in bf16).
    static ushort Bf16(float v) => (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16);
    static float FromBf16(ushort b) => BitConverter.Int32BitsToSingle(b << 16);
}
